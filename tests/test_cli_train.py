"""`hf-robust-ir train` from a recipe, under python, torchrun and accelerate launch (2 gloo processes on CPU)."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hf_robust_ir.cli import main

REPO = Path(__file__).resolve().parents[1]


def free_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


@pytest.fixture
def recipe(tmp_path, tiny_model_path, small_beir):
    config = {
        "model_name_or_path": tiny_model_path,
        "data_dir": str(small_beir),
        "num_negatives": 3,
        "mining_range_max": 20,
        "group_size": 2,
        "per_device_train_batch_size": 4,
        "max_steps": 2,
        "learning_rate": 1e-4,
        "output_dir": str(tmp_path / "run"),
        "save_strategy": "no",
        "report_to": "none",
        "logging_steps": 1,
        "use_cpu": True,
        "encode_batch_size": 32,
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_train_command_runs_and_reports_before_and_after(recipe, tmp_path, capsys):
    assert main(["train", "--config", str(recipe), "--max_steps", "3"]) == 0
    results = json.loads(capsys.readouterr().out)  # the one line on stdout: the trainer's logs go to stderr
    assert set(results["before"]) >= {"before_ndcg@10", "before_recall@100", "before_mrr@10", "before_map"}
    assert set(results["after"]) >= {"after_ndcg@10"}
    assert results["train"]["train_steps_per_second"] > 0
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["after"] == results["after"]
    assert (tmp_path / "run" / "modules.json").exists()
    from hf_robust_ir.modeling import BiEncoder

    BiEncoder.from_pretrained(tmp_path / "run")
    # the card in the output folder reports what the saved weights scored after training
    from huggingface_hub import ModelCard

    card = ModelCard.load(tmp_path / "run" / "README.md")
    reported = {result.metric_type: result.metric_value for result in card.data.eval_results}
    assert reported["ndcg_at_10"] == pytest.approx(results["after"]["after_ndcg@10"])
    assert card.data.eval_results[0].dataset_name == "scifact-slice0-test"
    assert "Schedule of the loss" not in str(card)  # InfoNCE, nothing scheduled: no empty schedule table


def test_unknown_recipe_key_is_an_error(recipe, capsys):
    assert main(["train", "--config", str(recipe), "--no_such_option", "1"]) == 2
    assert capsys.readouterr().err.strip() == "error: command line, field 'no_such_option': unknown field"


def test_card_of_a_run_on_relabeled_rows_names_the_file_and_the_relabeling(recipe, tmp_path, small_beir):
    """Rows written by `hf-robust-ir relabel` (``<out>/rlhn.jsonl`` next to ``<out>/summary.json``): the card names
    the file, not the BEIR folder's train split, and reports the judge and what the rlhn strategy changed (3 labels;
    the summary's other strategy, remove, changed 5, so a card of all strategies would say 8)."""
    doc_ids = [json.loads(line)["_id"] for line in (small_beir / "corpus.jsonl").read_text().splitlines()]
    relabeled = tmp_path / "relabeled"
    relabeled.mkdir()
    rows_file = relabeled / "rlhn.jsonl"
    rows = [
        {"query_id": f"q{i}", "query": f"question {i}", "doc_ids": doc_ids[2 * i : 2 * i + 2], "labels": [1.0, 0.0]}
        for i in range(4)
    ]
    rows_file.write_text("".join(json.dumps(row) + "\n" for row in rows))
    summary = {
        "judge": {"name": "embedding", "config": {"margin": 0.1}},
        "strategies": {
            "rlhn": {"flagged": 3, "queries_flagged": 2, "labels_changed": 3, "rows": 4},
            "remove": {"flagged": 3, "queries_flagged": 2, "labels_changed": 5, "rows": 2},
        },
        "queries": 4,
    }
    (relabeled / "summary.json").write_text(json.dumps(summary))
    overrides = ["--train_file", str(rows_file), "--evaluate_before", "false", "--max_steps", "1"]
    assert main(["train", "--config", str(recipe), *overrides]) == 0
    card = (tmp_path / "run" / "README.md").read_text()
    training_data = card.split("## Training data")[1].split("\n## ")[0]
    assert f"| {rows_file} | 4 | {len(doc_ids)} |" in training_data
    assert str(small_beir) not in training_data
    assert "Candidates were judged by `embedding`" in card and "Labels changed: **3**." in card


def test_missing_or_malformed_recipe_is_a_one_line_error(tmp_path, capsys):
    assert main(["train", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert capsys.readouterr().err.strip() == f"error: recipe '{tmp_path / 'nope.yaml'}' not found"
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n")
    assert main(["train", "--config", str(listed)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {listed}: a recipe is a mapping of argument names to values"


def test_settings_that_do_not_go_together_are_a_one_line_error(recipe, capsys):
    """Bad loss settings stop before the model and data load; settings the trainer refuses stop before training."""
    config = yaml.safe_load(recipe.read_text())
    recipe.write_text(yaml.safe_dump({**config, "loss": "label_weakening", "loss_kwargs": {"taylor_order": 2}}))
    line = 1 + recipe.read_text().splitlines().index("loss_kwargs:")
    assert main(["train", "--config", str(recipe)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: {recipe}, line {line}, field 'loss_kwargs': loss 'label_weakening': taylor_order replaces label "
        "relaxation: alpha must be 0, got 0.1"
    )
    overrides = ["--loss_kwargs", '{"alpha": 2}']  # an override is named as the command line
    assert main(["train", "--config", str(recipe), *overrides]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: command line, field 'loss_kwargs': loss 'label_weakening': alpha must be in [0, 1), got 2"
    )
    recipe.write_text(yaml.safe_dump({**config, "loss": "no_such_loss"}))
    line = 1 + next(i for i, text in enumerate(recipe.read_text().splitlines()) if text.startswith("loss:"))
    assert main(["train", "--config", str(recipe)]) == 2
    assert f"{recipe}, line {line}, field 'loss': loss 'no_such_loss': unknown loss 'no_such_loss'; registered" in (
        capsys.readouterr().err
    )
    recipe.write_text(yaml.safe_dump({**config, "loss": "infonce", "guide_lexical_weight": 0.6}))
    line = 1 + next(i for i, text in enumerate(recipe.read_text().splitlines()) if text.startswith("guide_lexical"))
    assert main(["train", "--config", str(recipe)]) == 2  # a guide setting the loss does not read: before loading
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: {recipe}, line {line}, field 'guide_lexical_weight': loss 'infonce' reads no guide"
    )
    recipe.write_text(yaml.safe_dump({**config, "metric_for_best_model": "loss"}))  # no loss to pick the best by
    line = 1 + next(i for i, text in enumerate(recipe.read_text().splitlines()) if text.startswith("metric_for"))
    assert main(["train", "--config", str(recipe)]) == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .splitlines()[-1]
        .startswith(
            f"error: {recipe}, line {line}, field 'metric_for_best_model': metric_for_best_model is 'loss', but the "
            "evaluator reports retrieval metrics"
        )
    )
    workers = {"dataloader_num_workers": 1, "dataloader_persistent_workers": True}  # refused by the trainer
    recipe.write_text(yaml.safe_dump({**config, **workers}))
    assert main(["train", "--config", str(recipe), "--evaluate_before", "false"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert (
        err.strip()
        .splitlines()[-1]
        .startswith(f"error: {recipe}: dataloader_persistent_workers keeps each worker's copy of the collator")
    )


def test_a_null_in_the_recipe_sets_the_field_to_none_or_is_refused(recipe, capsys):
    from hf_robust_ir.commands.train import parse_recipe
    from hf_robust_ir.data.schema import DataFormatError

    config = yaml.safe_load(recipe.read_text())
    recipe.write_text(yaml.safe_dump({**config, "eval_split": None, "ddp_find_unused_parameters": None}))
    _, data_args, training_args = parse_recipe(str(recipe), [])
    assert data_args.eval_split is None and training_args.ddp_find_unused_parameters is None  # defaults: test, False
    assert parse_recipe(str(recipe), ["--eval_split", "dev"])[1].eval_split == "dev"  # the command line wins
    assert main(["train", "--config", str(recipe)]) == 0
    results = json.loads(capsys.readouterr().out)
    assert "before" not in results and "after" not in results  # no evaluation split: nothing evaluated
    recipe.write_text(yaml.safe_dump({**config, "learning_rate": None}))
    line = 1 + next(i for i, text in enumerate(recipe.read_text().splitlines()) if text.startswith("learning_rate:"))
    with pytest.raises(DataFormatError) as error:
        parse_recipe(str(recipe), [])
    assert str(error.value) == f"{recipe}, line {line}, field 'learning_rate': null is not a value of this field"


def _launch(prefix, recipe, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = prefix + ["-m", "hf_robust_ir.cli", "train", "--config", str(recipe), "--evaluate_before", "false"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=400, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


@pytest.mark.distributed
def test_torchrun_two_processes(recipe, tmp_path):
    result = _launch(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", free_port()],
        recipe,
        tmp_path,
    )
    assert "world_size=2" in result.stderr
    assert (tmp_path / "run" / "results.json").exists()


@pytest.mark.distributed
def test_accelerate_launch_two_processes(recipe, tmp_path):
    accelerate = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    accelerate += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    result = _launch(accelerate + ["--main_process_port", free_port()], recipe, tmp_path)
    assert "world_size=2" in result.stderr
    assert (tmp_path / "run" / "results.json").exists()


def test_bad_input_is_reported_with_file_and_line_not_a_traceback(tmp_path, tiny_model_path, capsys):
    from hf_robust_ir.cli import main

    (tmp_path / "qrels").mkdir()
    (tmp_path / "corpus.jsonl").write_text('{"_id": "d1", "text": "a"}\n{"_id": "d2", "text": \n')
    (tmp_path / "queries.jsonl").write_text('{"_id": "q1", "text": "x"}\n')
    (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    assert main(["eval", "--model", tiny_model_path, "--data", str(tmp_path), "--split", "test"]) == 2
    err = capsys.readouterr().err
    assert f"error: {tmp_path / 'corpus.jsonl'}, line 2: malformed JSON" in err and "Traceback" not in err


def test_relabel_summary_is_the_one_next_to_the_rows_of_one_of_its_strategies(tmp_path):
    from hf_robust_ir.commands.train import relabel_summary_of

    summary = {"judge": {"name": "embedding"}, "strategies": {"rlhn": {"labels_changed": 2}}}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    (tmp_path / "rlhn").mkdir()  # the save_to_disk copy
    for name in ("rlhn.jsonl", "mine.jsonl"):
        (tmp_path / name).write_text("")
    assert relabel_summary_of(str(tmp_path / "rlhn.jsonl")) == {**summary, "strategy": "rlhn"}
    assert relabel_summary_of(str(tmp_path / "rlhn")) == {**summary, "strategy": "rlhn"}
    assert relabel_summary_of(str(tmp_path / "mine.jsonl")) is None  # not rows the relabeling run wrote
    assert relabel_summary_of(str(tmp_path / "elsewhere" / "rlhn.jsonl")) is None  # no summary next to it


@pytest.mark.parametrize("command", ["eval", "mine", "score"])
def test_a_missing_split_is_a_one_line_error_in_every_command(command, small_beir, tiny_model_path, tmp_path, capsys):
    from hf_robust_ir.cli import main

    model_flag = "--teacher" if command == "score" else "--model"
    argv = [command, "--data", str(small_beir), model_flag, tiny_model_path, "--split", "dev"]
    argv += {"eval": [], "mine": ["--out", str(tmp_path / "rows")], "score": ["--output", str(tmp_path / "s")]}[command]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert err.splitlines()[-1].startswith(f"error: {small_beir / 'qrels' / 'dev.tsv'} not found; splits available")


def test_a_data_dir_that_is_not_a_beir_folder_is_one_error_line(recipe, tmp_path, capsys):
    from hf_robust_ir.cli import main

    assert main(["train", "--config", str(recipe), "--data_dir", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == f"error: {tmp_path / 'nowhere'} is not a BEIR folder (no corpus.jsonl)"


def test_resume_from_checkpoint_true_resumes_from_the_last_checkpoint(recipe, tmp_path, capsys):
    """As transformers takes ``True``: a recipe's ``true`` (the text "True" after parsing) is the last checkpoint."""
    settings = yaml.safe_load(recipe.read_text())
    settings.update(save_strategy="steps", save_steps=2, eval_split=None)
    settings["resume_from_checkpoint"] = True
    recipe.write_text(yaml.safe_dump(settings))
    assert main(["train", "--config", str(recipe)]) == 2  # nothing to resume from yet: said before anything loads
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: resume_from_checkpoint is true, but output_dir {settings['output_dir']!r} holds no checkpoint-*"
    )
    assert main(["train", "--config", str(recipe), "--resume_from_checkpoint", "false"]) == 0
    assert (tmp_path / "run" / "checkpoint-2").is_dir()
    assert main(["train", "--config", str(recipe), "--max_steps", "3", "--save_steps", "1"]) == 0
    state = json.loads((tmp_path / "run" / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["global_step"] == 3 and [e["step"] for e in state["log_history"] if "loss" in e] == [1, 2, 3]
    assert not (tmp_path / "run" / "checkpoint-1").exists()  # steps 1-2 were not trained again
