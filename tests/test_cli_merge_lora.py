"""`hf-robust-ir merge-lora`: a LoRA run's adapter folder becomes a full model that loads without peft."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from conftest import fill_lora_b
from peft import LoraConfig
from sentence_transformers import SentenceTransformer
from transformers import AutoModel

from hf_robust_ir.cli import main
from hf_robust_ir.modeling import BiEncoder, CrossEncoder

QUERIES = ["what is label noise", "how are hard negatives mined"]
DOCUMENTS = ["label noise means some training labels are wrong", "hard negatives are mined with a retriever"]


def _lora_run_recipe(tmp_path, tiny_model_path, small_beir, **changes) -> dict:
    """A `train` recipe of a LoRA run of ``max_steps`` steps on the small BEIR slice, a checkpoint at its last step."""
    recipe = {
        "model_name_or_path": tiny_model_path,
        "data_dir": str(small_beir),
        "num_negatives": 2,
        "mining_range_max": 10,
        "group_size": 2,
        "per_device_train_batch_size": 4,
        "lora_r": 2,
        "lora_target_modules": ["query", "value"],
        "output_dir": str(tmp_path / "run"),
        "save_strategy": "steps",
        "report_to": "none",
        "use_cpu": True,
        **changes,
    }
    return {**recipe, "save_steps": recipe["max_steps"]}


def test_the_adapter_of_a_lora_training_run_merges_into_a_model_that_loads_without_peft(
    tmp_path, tiny_model_path, small_beir, capsys
):
    recipe = _lora_run_recipe(tmp_path, tiny_model_path, small_beir, eval_split=None, max_steps=1, learning_rate=1e-3)
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["train", "--config", str(tmp_path / "recipe.yaml")]) == 0
    assert (tmp_path / "run" / "adapter_config.json").is_file()
    checkpoint = tmp_path / "run" / "checkpoint-1"
    assert (checkpoint / "adapter_config.json").is_file()  # a trainer checkpoint is an adapter folder too
    capsys.readouterr()
    assert main(["merge-lora", str(checkpoint), "--out", str(tmp_path / "merged-checkpoint")]) == 0
    np.testing.assert_allclose(
        BiEncoder.from_pretrained(tmp_path / "merged-checkpoint").encode_documents(DOCUMENTS),
        BiEncoder.from_pretrained(checkpoint).encode_documents(DOCUMENTS),
        atol=1e-5,
    )
    assert not (tmp_path / "merged-checkpoint" / "adapter_config.json").exists()
    capsys.readouterr()
    adapter = BiEncoder.from_pretrained(tmp_path / "run")
    fill_lora_b(adapter)  # an adapter that changes the vectors, whatever one step learned
    adapter.save_pretrained(tmp_path / "run")
    expected = adapter.encode_documents(DOCUMENTS)

    assert main(["merge-lora", str(tmp_path / "run"), "--out", str(tmp_path / "merged")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result == {"adapter_dir": str(tmp_path / "run"), "out": str(tmp_path / "merged"), "model": "BiEncoder"}
    merged = tmp_path / "merged"
    assert (merged / "model.safetensors").is_file() and not (merged / "adapter_config.json").exists()
    assert not np.allclose(BiEncoder.from_pretrained(tiny_model_path).encode_documents(DOCUMENTS), expected, atol=1e-3)
    np.testing.assert_allclose(BiEncoder.from_pretrained(merged).encode_documents(DOCUMENTS), expected, atol=1e-5)
    np.testing.assert_allclose(SentenceTransformer(str(merged), device="cpu").encode(DOCUMENTS), expected, atol=1e-5)
    encoder = AutoModel.from_pretrained(str(merged))
    assert not hasattr(encoder, "peft_config")


def test_separate_towers_and_a_reranker_merge_too(tmp_path, tiny_model_path, capsys):
    config = LoraConfig(r=2, lora_alpha=4, target_modules=["query", "value"], lora_dropout=0.0)
    towers = BiEncoder.from_pretrained(tiny_model_path, separate_towers=True).add_lora(config)
    fill_lora_b(towers)
    towers.save_pretrained(tmp_path / "towers")
    assert main(["merge-lora", str(tmp_path / "towers"), "--out", str(tmp_path / "towers-merged")]) == 0
    merged = BiEncoder.from_pretrained(tmp_path / "towers-merged")
    assert not (tmp_path / "towers-merged" / "query_encoder" / "adapter_config.json").exists()
    np.testing.assert_allclose(merged.encode_queries(QUERIES), towers.encode_queries(QUERIES), atol=1e-5)

    torch.manual_seed(0)
    reranker = CrossEncoder.from_pretrained(tiny_model_path, max_length=64).add_lora(config)
    fill_lora_b(reranker)
    reranker.save_pretrained(tmp_path / "reranker")
    assert main(["merge-lora", str(tmp_path / "reranker"), "--out", str(tmp_path / "reranker-merged")]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["model"] == "CrossEncoder"
    pairs = [(QUERIES[0], document) for document in DOCUMENTS]
    from sentence_transformers import CrossEncoder as SentenceTransformersCrossEncoder

    scores = SentenceTransformersCrossEncoder(str(tmp_path / "reranker-merged"), device="cpu").predict(pairs)
    np.testing.assert_allclose(scores, reranker.predict(pairs), atol=1e-5)


@pytest.mark.parametrize("kind", ["full model", "empty folder", "missing folder"])
def test_a_folder_without_an_adapter_is_one_error_line_naming_it(kind, tmp_path, tiny_model_path, capsys):
    folder = tmp_path / "model"
    if kind == "full model":
        BiEncoder.from_pretrained(tiny_model_path).save_pretrained(folder)
    elif kind == "empty folder":
        folder.mkdir()
    capsys.readouterr()
    assert main(["merge-lora", str(folder), "--out", str(tmp_path / "merged")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and str(folder) in err and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "merged").exists()


def test_merging_into_the_adapter_folder_or_with_a_base_model_gone_is_one_error_line(tmp_path, tiny_model_path, capsys):
    import shutil

    base = shutil.copytree(tiny_model_path, tmp_path / "base")
    model = BiEncoder.from_pretrained(base).add_lora(LoraConfig(r=2, target_modules=["query"], lora_dropout=0.0))
    model.save_pretrained(tmp_path / "adapter")
    capsys.readouterr()
    assert main(["merge-lora", str(tmp_path / "adapter"), "--out", str(tmp_path / "adapter")]) == 2
    assert "is the adapter folder" in capsys.readouterr().err
    shutil.rmtree(base)
    assert main(["merge-lora", str(tmp_path / "adapter"), "--out", str(tmp_path / "merged")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {tmp_path / 'adapter'}") and "not a local folder" in err and "\n" not in err
    assert main(["merge-lora", str(tmp_path / "adapter"), "--out", str(tmp_path / "merged"), "--base_model",
                 tiny_model_path]) == 0  # fmt: skip
    assert (tmp_path / "merged" / "model.safetensors").is_file()


def test_train_with_merge_lora_saves_the_merged_model_and_its_card(tmp_path, tiny_model_path, small_beir, capsys):
    """``merge_lora: true``: the output folder holds the full model with the trained adapter merged in (what the
    checkpoint's adapter encodes), evaluated as merged, with a card of a full model; checkpoints keep the adapter."""
    recipe = _lora_run_recipe(tmp_path, tiny_model_path, small_beir, max_steps=2, learning_rate=1e-2, merge_lora=True)
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["train", "--config", str(tmp_path / "recipe.yaml")]) == 0
    results = json.loads(capsys.readouterr().out)
    run, checkpoint = tmp_path / "run", tmp_path / "run" / "checkpoint-2"
    assert (run / "model.safetensors").is_file() and not (run / "adapter_config.json").exists()
    assert (checkpoint / "adapter_config.json").is_file()  # the checkpoint to resume from keeps the adapter
    trained = BiEncoder.from_pretrained(checkpoint).encode_documents(DOCUMENTS)
    assert not np.allclose(BiEncoder.from_pretrained(tiny_model_path).encode_documents(DOCUMENTS), trained, atol=1e-3)
    np.testing.assert_allclose(BiEncoder.from_pretrained(run).encode_documents(DOCUMENTS), trained, atol=1e-5)
    np.testing.assert_allclose(SentenceTransformer(str(run), device="cpu").encode(DOCUMENTS), trained, atol=1e-5)
    assert not hasattr(AutoModel.from_pretrained(str(run)), "peft_config")
    from huggingface_hub import ModelCard

    card = ModelCard.load(run / "README.md")
    assert "peft" not in card.data.tags and "LoRA adapter" not in card.text  # the card the training wrote said so
    reported = {result.metric_type: result.metric_value for result in card.data.eval_results}
    assert reported["ndcg_at_10"] == pytest.approx(results["after"]["after_ndcg@10"])

    no_eval = {**recipe, "eval_split": None, "output_dir": str(tmp_path / "no-eval"), "save_strategy": "no"}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(no_eval))
    assert main(["train", "--config", str(tmp_path / "recipe.yaml")]) == 0  # no evaluation: the card is written again
    assert "LoRA adapter" not in ModelCard.load(tmp_path / "no-eval" / "README.md").text
    capsys.readouterr()

    # an output folder holding an earlier run's adapter: loaders would read it instead of the merged weights
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump({**recipe, "output_dir": str(checkpoint)}))
    assert main(["train", "--config", str(tmp_path / "recipe.yaml")]) == 2
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert last_line.endswith(
        f"field 'output_dir': {str(checkpoint)!r} holds the LoRA adapter of an earlier run, which loaders would"
        " read instead of the merged weights"
    )
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump({**recipe, "lora_r": 0, "output_dir": str(tmp_path / "b")}))
    assert main(["train", "--config", str(tmp_path / "recipe.yaml")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: {tmp_path / 'recipe.yaml'}: merge_lora needs a LoRA adapter: set lora_r"
    )
