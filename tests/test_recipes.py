"""Every shipped recipe runs, at a tiny scale on CPU: train recipes (one process; the DDP accelerate config with two
gloo processes), relabel recipes (their judge swapped for a tiny model of the same type), and the accelerate configs
parse with accelerate's own loader."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_cli_train import free_port
from test_relabel_judges import tiny_causal_lm

from hf_robust_ir.cli import main

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / "recipes").glob("*.yaml"))
TRAIN_RECIPES = [p for p in RECIPES if "loss" in yaml.safe_load(p.read_text())]
RELABEL_RECIPES = [p for p in RECIPES if "judge" in yaml.safe_load(p.read_text())]
SELF_TRAIN_RECIPES = [p for p in RECIPES if "rounds" in yaml.safe_load(p.read_text())]
SYNTHESIZE_RECIPES = [p for p in RECIPES if "grades" in yaml.safe_load(p.read_text())]
GRADED_TRAIN_RECIPE = REPO / "recipes" / "scifact_sycl_graded.yaml"  # trains on what the synthesize recipe writes
ACCELERATE_CONFIGS = sorted((REPO / "recipes" / "accelerate").glob("*.yaml"))


def test_every_recipe_is_covered():
    assert {p.name for p in TRAIN_RECIPES} >= {
        "scifact_infonce.yaml",
        "scifact_label_weakening.yaml",
        "scifact_rlhn_train.yaml",
        "scifact_guide_masked.yaml",
        "scifact_distillation.yaml",
    }
    assert {p.name for p in RELABEL_RECIPES} >= {
        "relabel_rlhn_embedding.yaml",
        "relabel_arhn_llm.yaml",
        "relabel_rlhn_openai.yaml",
    }
    assert {p.name for p in SELF_TRAIN_RECIPES} == {"self_training_scifact.yaml"}
    assert {p.name for p in SYNTHESIZE_RECIPES} == {"synthesize_graded_scifact.yaml"}
    assert GRADED_TRAIN_RECIPE in TRAIN_RECIPES
    assert set(RECIPES) == set(TRAIN_RECIPES) | set(RELABEL_RECIPES) | set(SELF_TRAIN_RECIPES) | set(SYNTHESIZE_RECIPES)


def tiny_train_overrides(model: str, data: Path, output: Path) -> list[str]:
    settings = {
        "model_name_or_path": model,
        "data_dir": str(data),
        "max_train_queries": 8,
        "max_eval_queries": 4,
        "num_negatives": 2,
        "per_device_train_batch_size": 4,
        "max_steps": 1,
        "output_dir": str(output),
        "save_strategy": "no",
        "use_cpu": "true",
        "evaluate_before": "false",
        "encode_batch_size": 32,
    }
    return [token for key, value in settings.items() for token in (f"--{key}", str(value))]


@pytest.fixture(scope="module")
def relabeled_rows(tmp_path_factory, tiny_model_path, small_beir):  # noqa: F811
    """The embedding relabel recipe at a tiny scale: its ``rlhn`` output feeds the relabel-then-train recipe."""
    output = tmp_path_factory.mktemp("relabel")
    judge = json.dumps({"type": "embedding", "model": tiny_model_path, "margin": 0.05})
    argv = ["relabel", "--config", str(REPO / "recipes" / "relabel_rlhn_embedding.yaml"), "--judge", judge]
    argv += ["--data_dir", str(small_beir), "--mining_model", tiny_model_path, "--max_queries", "8"]
    argv += ["--num_negatives", "3", "--output_dir", str(output), "--show_progress_bar", "false"]
    assert main(argv) == 0
    return output


@pytest.mark.parametrize("recipe", [p for p in TRAIN_RECIPES if p != GRADED_TRAIN_RECIPE], ids=lambda p: p.stem)
def test_train_recipe_runs_tiny(recipe, tmp_path, tiny_model_path, small_beir, relabeled_rows, capsys):  # noqa: F811
    argv = ["train", "--config", str(recipe), *tiny_train_overrides(tiny_model_path, small_beir, tmp_path / "run")]
    if "train_file" in yaml.safe_load(recipe.read_text()):
        argv += ["--train_file", str(relabeled_rows / "rlhn")]
    assert main(argv) == 0
    results = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert results["train"]["train_loss"] == results["train"]["train_loss"]  # finite, not NaN
    assert "after_ndcg@10" in results["after"]
    assert (tmp_path / "run" / "README.md").exists()  # the model card


def test_synthesize_then_graded_training(tmp_path, tiny_model_path, small_beir, capsys):  # noqa: F811
    """The SyCL pair: graded passages from a tiny random causal LM (a BEIR folder), then list-wise training on it."""
    model, tokenizer = tiny_causal_lm()
    llm = tmp_path / "tiny-llm"
    model.save_pretrained(llm)
    tokenizer.save_pretrained(llm)
    synthetic = tmp_path / "synthetic"
    argv = [
        "synthesize",
        "--config",
        str(SYNTHESIZE_RECIPES[0]),
        "--backend",
        json.dumps({"type": "hf", "model": str(llm)}),
    ]
    argv += ["--data_dir", str(small_beir), "--output_dir", str(synthetic), "--max_queries", "4"]
    argv += ["--max_new_tokens", "12", "--show_progress_bar", "false"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["rows"] >= 1 and summary["synthetic_documents"] >= 1
    graded = (synthetic / "qrels" / "train.tsv").read_text()
    assert "synthetic:" in graded and (synthetic / "qrels" / "test.tsv").exists()
    argv = [
        "train",
        "--config",
        str(GRADED_TRAIN_RECIPE),
        *tiny_train_overrides(tiny_model_path, synthetic, tmp_path / "run"),
    ]
    assert main(argv) == 0
    results = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert results["train"]["train_loss"] == results["train"]["train_loss"]
    assert "after_ndcg@10" in results["after"]


@pytest.mark.parametrize("recipe", SELF_TRAIN_RECIPES, ids=lambda p: p.stem)
def test_self_train_recipe_runs_tiny(recipe, tmp_path, tiny_model_path, small_beir, capsys):  # noqa: F811
    settings = {"model": tiny_model_path, "data_dir": str(small_beir), "output_dir": str(tmp_path / "run")}
    settings.update(rounds=1, synthetic_passages=6, candidates_per_query=2, pretrain_group_size=2, max_length=32)
    settings.update(batch_size=4, max_eval_queries=4, mining_range_max=5, show_progress_bar=False)
    argv = ["self-train", "--config", str(recipe)]
    argv += [token for key, value in settings.items() for token in (f"--{key}", json.dumps(value))]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [r["round"] for r in printed["rounds"]] == [0, 1] and printed["selected_round"] == 1


def test_relabel_then_train_sees_relabeled_positives(relabeled_rows):
    summary = json.loads((relabeled_rows / "summary.json").read_text())
    rows = [json.loads(line) for line in (relabeled_rows / "rlhn.jsonl").read_text().splitlines()]
    relabeled = sum(source.startswith("relabeled:embedding") for row in rows for source in row["label_source"])
    assert relabeled == summary["strategies"]["rlhn"]["labels_changed"] > 0


@pytest.mark.parametrize("name", ["relabel_arhn_llm.yaml", "relabel_rlhn_openai.yaml"])
def test_llm_relabel_recipes_run_with_a_tiny_causal_lm(name, tmp_path, tiny_model_path, small_beir):  # noqa: F811
    """The LLM recipes with their LLM replaced by a tiny random one: the pipeline runs end to end, and a random
    model's answers never parse, so nothing is relabeled."""
    model, tokenizer = tiny_causal_lm()
    folder = tmp_path / "tiny-llm"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    recipe = yaml.safe_load((REPO / "recipes" / name).read_text())
    if recipe["judge"]["type"] == "cascade":  # keep the cascade; the expensive judge runs the local tiny LM
        judge = {
            **recipe["judge"],
            "cheap": {"type": "embedding", "model": tiny_model_path, "margin": 1.0},  # flags everything
            "expensive": {"type": "generative", "model": str(folder), "mode": "list", "max_new_tokens": 8},
        }
    else:
        judge = {**recipe["judge"], "model": str(folder)}
    argv = ["relabel", "--config", str(REPO / "recipes" / name), "--judge", json.dumps(judge)]
    argv += ["--data_dir", str(small_beir), "--mining_model", tiny_model_path, "--max_queries", "2"]
    argv += ["--num_negatives", "2", "--output_dir", str(tmp_path / "out"), "--show_progress_bar", "false"]
    assert main(argv) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    for strategy in recipe["strategies"]:
        assert summary["strategies"][strategy]["labels_changed"] == 0
        assert (tmp_path / "out" / f"{strategy}.jsonl").exists()


@pytest.mark.parametrize("config", ACCELERATE_CONFIGS, ids=lambda p: p.stem)
def test_accelerate_configs_load(config):
    from accelerate.commands.config.config_args import load_config_from_file

    loaded = load_config_from_file(str(config))
    assert loaded.num_processes >= 1 and loaded.compute_environment.value == "LOCAL_MACHINE"


@pytest.mark.distributed
def test_ddp_accelerate_config_runs_two_processes(tmp_path, tiny_model_path, small_beir):  # noqa: F811
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file"]
    command += [str(REPO / "recipes" / "accelerate" / "multi_gpu_ddp.yaml"), "--mixed_precision", "no"]
    command += ["--main_process_port", free_port(), "-m", "hf_robust_ir.cli", "train"]
    command += ["--config", str(REPO / "recipes" / "scifact_label_weakening.yaml")]
    command += tiny_train_overrides(tiny_model_path, small_beir, tmp_path / "run")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=400, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "world_size=2" in result.stderr
    assert (tmp_path / "run" / "results.json").exists()
