"""LoRA through peft: add an adapter, train it, save only the adapter, load it, merge it; outputs checked each step."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import fill_lora_b, perturb_document_tower
from peft import LoraConfig, PeftModel
from safetensors import safe_open
from sentence_transformers import SentenceTransformer
from transformers import AutoModel

from hf_robust_ir.modeling import BiEncoder

QUERIES = ["what is label noise", "how are hard negatives mined", "define dense retrieval", "bm25 ranking"]
DOCUMENTS = [
    "label noise means some training labels are wrong",
    "hard negatives are mined with a first-stage retriever",
    "dense retrieval embeds queries and documents as vectors",
    "bm25 is a lexical ranking function",
]


def _encode(model: BiEncoder) -> tuple[np.ndarray, np.ndarray]:
    return model.encode_queries(QUERIES), model.encode_documents(DOCUMENTS)


def _base_state(model: BiEncoder) -> dict[str, torch.Tensor]:
    """The encoder's own weights, under names that do not depend on the peft wrapping."""
    state = {}
    for name, value in model.query_encoder.state_dict().items():
        if "lora_" in name:
            continue
        name = name.removeprefix("base_model.model.").replace(".base_layer.", ".")
        state[name] = value.detach().clone()
    return state


@pytest.fixture(scope="module")
def trained(tiny_model_path, tmp_path_factory):
    """Train a LoRA adapter on a contrastive objective and save it, recording outputs along the way."""
    torch.manual_seed(0)
    model = BiEncoder.from_pretrained(tiny_model_path, temperature=0.1)
    base_outputs = _encode(model)
    base_state = _base_state(model)

    model.add_lora(LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"], lora_dropout=0.0))
    added_outputs = _encode(model)

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-2)
    model.train()
    grads_seen: dict[str, bool] = {}
    for _ in range(5):
        out = model(query=model.tokenize(QUERIES, "query"), document=model.tokenize(DOCUMENTS, "document"))
        scores = model.similarity(out["query_embeddings"], out["document_embeddings"])
        loss = torch.nn.functional.cross_entropy(scores, torch.arange(len(QUERIES)))
        optimizer.zero_grad()
        loss.backward()
        for name, parameter in model.named_parameters():
            grads_seen[name] = grads_seen.get(name, False) or parameter.grad is not None
        optimizer.step()
    model.eval()

    folder = tmp_path_factory.mktemp("lora-adapter")
    model.save_pretrained(folder)
    return SimpleNamespace(
        model=model,
        folder=folder,
        base_outputs=base_outputs,
        base_state=base_state,
        added_outputs=added_outputs,
        trained_outputs=_encode(model),
        grads_seen=grads_seen,
    )


def _assert_outputs_close(actual, expected, atol):
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(a, e, atol=atol)


def test_new_adapter_leaves_outputs_unchanged(trained):
    # LoRA's B matrix starts at zero, so the adapter adds exactly nothing before training
    _assert_outputs_close(trained.added_outputs, trained.base_outputs, atol=1e-7)


def test_training_moves_only_the_adapter(trained):
    trainable = [name for name, p in trained.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    assert {name for name, seen in trained.grads_seen.items() if seen} == set(trainable)
    assert any("lora_B" in name and p.abs().max() > 0 for name, p in trained.model.named_parameters())

    after = _base_state(trained.model)
    assert after.keys() == trained.base_state.keys()
    for name, value in trained.base_state.items():
        assert torch.equal(after[name], value), name
    difference = max(np.abs(a - b).max() for a, b in zip(trained.trained_outputs, trained.base_outputs))
    assert difference > 1e-3


def test_save_writes_only_the_adapter(trained, tiny_model_path):
    files = {p.name for p in trained.folder.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "hf_robust_ir_config.json"} <= files
    assert {"tokenizer.json", "tokenizer_config.json"} <= files
    assert not files & {"model.safetensors", "pytorch_model.bin"}
    with safe_open(str(trained.folder / "adapter_model.safetensors"), "pt") as weights:
        keys = list(weights.keys())
    assert keys and all("lora_" in key for key in keys)
    adapter_config = json.loads((trained.folder / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == tiny_model_path
    assert adapter_config["r"] == 4


def test_adapter_loads_back(trained):
    loaded = BiEncoder.from_pretrained(trained.folder)
    assert isinstance(loaded.query_encoder, PeftModel)
    assert loaded.retrieval_config.temperature == 0.1
    _assert_outputs_close(_encode(loaded), trained.trained_outputs, atol=1e-6)
    # sentence-transformers reads the adapter folder too (base model + adapter)
    st = SentenceTransformer(str(trained.folder), device="cpu")
    np.testing.assert_allclose(st.encode(DOCUMENTS), trained.trained_outputs[1], atol=1e-5)
    # so does transformers (peft's integration): mean-pooled, normalized hidden states give the same vectors
    encoder = AutoModel.from_pretrained(str(trained.folder)).eval()
    batch = loaded.tokenize(DOCUMENTS, "document")
    with torch.no_grad():
        hidden = encoder(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    vectors = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    np.testing.assert_allclose(vectors.numpy(), trained.trained_outputs[1], atol=1e-5)


def test_a_loaded_adapter_trains_on(trained):
    """An adapter checkpoint loads with the adapter trainable, as it was saved (training can resume from it)."""
    loaded = BiEncoder.from_pretrained(trained.folder)
    trainable = {name for name, p in loaded.named_parameters() if p.requires_grad}
    assert trainable == {name for name, p in trained.model.named_parameters() if p.requires_grad}
    assert len(trainable) == 8  # lora_A and lora_B of query and value in 2 layers


def test_merge_and_save_full_model(trained, tmp_path):
    merged = BiEncoder.from_pretrained(trained.folder).merge_lora()
    assert not isinstance(merged.query_encoder, PeftModel)
    assert not any("lora_" in name for name, _ in merged.named_parameters())
    _assert_outputs_close(_encode(merged), trained.trained_outputs, atol=1e-5)

    merged.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    assert not (tmp_path / "adapter_config.json").exists()
    st = SentenceTransformer(str(tmp_path), device="cpu")
    np.testing.assert_allclose(st.encode(QUERIES), trained.trained_outputs[0], atol=1e-5)
    np.testing.assert_allclose(st.encode(DOCUMENTS), trained.trained_outputs[1], atol=1e-5)
    _assert_outputs_close(_encode(BiEncoder.from_pretrained(tmp_path)), trained.trained_outputs, atol=1e-5)


def test_separate_towers_with_adapters_round_trip(tiny_model_path, tmp_path):
    torch.manual_seed(0)
    model = BiEncoder.from_pretrained(tiny_model_path, separate_towers=True)
    model.add_lora(LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"], lora_dropout=0.0))
    fill_lora_b(model.query_encoder, 0.05)  # the two adapters differ from zero and from each other
    fill_lora_b(model.document_encoder, -0.05)
    queries, documents = _encode(model)
    model.save_pretrained(tmp_path)
    for tower in ("query_encoder", "document_encoder"):
        assert (tmp_path / tower / "adapter_config.json").exists()
        assert not (tmp_path / tower / "model.safetensors").exists()
    loaded = BiEncoder.from_pretrained(tmp_path)
    assert isinstance(loaded.query_encoder, PeftModel) and isinstance(loaded.document_encoder, PeftModel)
    loaded_queries, loaded_documents = _encode(loaded)
    np.testing.assert_allclose(loaded_queries, queries, atol=1e-6)
    np.testing.assert_allclose(loaded_documents, documents, atol=1e-6)
    base_documents = BiEncoder.from_pretrained(tiny_model_path).encode_documents(DOCUMENTS)
    assert not np.allclose(loaded_documents, base_documents, atol=1e-3)


def test_a_second_adapter_goes_on_the_saved_merged_model_only(trained, tmp_path):
    """A loaded adapter trains on as it is. Wrapping it in a second adapter saved only the new one, under nested names,
    with no base model; adding one to a model merged in memory saved an adapter naming the first adapter's base
    folder, which lacks the merged weights: either way the reloaded model silently lost the first adapter."""
    loaded = BiEncoder.from_pretrained(trained.folder)
    config = LoraConfig(r=2, lora_alpha=4, target_modules=["query"], lora_dropout=0.0)
    with pytest.raises(ValueError, match=r"already holds a LoRA adapter.*merge_lora\(\), save_pretrained"):
        loaded.add_lora(config)
    assert isinstance(loaded.query_encoder, PeftModel)
    assert not isinstance(loaded.query_encoder.base_model.model, PeftModel)
    loaded.merge_lora()
    with pytest.raises(ValueError, match=r"merged in memory only.*save_pretrained\(folder\) first"):
        loaded.add_lora(config)
    assert not isinstance(loaded.query_encoder, PeftModel)

    loaded.save_pretrained(tmp_path / "merged")
    model = BiEncoder.from_pretrained(tmp_path / "merged").add_lora(config)
    _assert_outputs_close(_encode(model), trained.trained_outputs, atol=1e-5)  # the new adapter adds nothing yet
    fill_lora_b(model)
    expected = _encode(model)
    model.save_pretrained(tmp_path / "second")
    _assert_outputs_close(_encode(BiEncoder.from_pretrained(tmp_path / "second")), expected, atol=1e-6)


def test_merging_a_model_without_adapter_is_a_clear_error(tiny_model_path):
    with pytest.raises(ValueError, match="no LoRA adapter to merge"):
        BiEncoder.from_pretrained(tiny_model_path).merge_lora()


def test_an_adapter_whose_base_model_is_gone_says_how_to_load_it(trained, tiny_model_path, tmp_path):
    base = shutil.copytree(tiny_model_path, tmp_path / "base")
    model = BiEncoder.from_pretrained(base).add_lora(LoraConfig(r=2, target_modules=["query"], lora_dropout=0.0))
    fill_lora_b(model)
    expected = _encode(model)
    model.save_pretrained(tmp_path / "adapter")
    shutil.rmtree(base)
    with pytest.raises(FileNotFoundError, match=r"is not a local folder; pass its local copy as base_model="):
        BiEncoder.from_pretrained(tmp_path / "adapter")
    _assert_outputs_close(
        _encode(BiEncoder.from_pretrained(tmp_path / "adapter", base_model=tiny_model_path)), expected, 1e-6
    )


def test_separate_towers_of_their_own_weights_keep_each_towers_base_model(tiny_model_path, tmp_path):
    """Towers trained apart have their own base weights: each adapter must name its own tower as its base model
    (peft writes the base into the config it is given, so one config shared by both towers named the document
    tower for both, and the reloaded query tower ran on the document tower's weights)."""
    torch.manual_seed(0)
    towers = BiEncoder.from_pretrained(tiny_model_path, separate_towers=True)
    perturb_document_tower(towers)
    towers.save_pretrained(tmp_path / "towers")

    model = BiEncoder.from_pretrained(tmp_path / "towers")
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"], lora_dropout=0.0)
    model.add_lora(config)
    assert config.base_model_name_or_path is None  # the caller's config is left as it was
    fill_lora_b(model)
    queries, documents = _encode(model)
    model.save_pretrained(tmp_path / "lora")
    for tower in ("query_encoder", "document_encoder"):
        adapter_config = json.loads((tmp_path / "lora" / tower / "adapter_config.json").read_text())
        assert adapter_config["base_model_name_or_path"] == str(tmp_path / "towers" / tower)
    loaded_queries, loaded_documents = _encode(BiEncoder.from_pretrained(tmp_path / "lora"))
    np.testing.assert_allclose(loaded_queries, queries, atol=1e-6)
    np.testing.assert_allclose(loaded_documents, documents, atol=1e-6)


def test_an_adapter_of_a_model_loaded_from_a_relative_path_loads_from_any_working_directory(
    tiny_model_path, tmp_path, monkeypatch
):
    """The base model is recorded by its absolute path, not by the relative one it was loaded from."""
    from hf_robust_ir.modeling import CrossEncoder

    shutil.copytree(tiny_model_path, tmp_path / "work" / "models" / "base")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    config = LoraConfig(r=2, lora_alpha=4, target_modules=["query", "value"], lora_dropout=0.0)
    model = BiEncoder.from_pretrained("models/base").add_lora(config)
    fill_lora_b(model)
    expected = _encode(model)
    model.save_pretrained("adapter")
    torch.manual_seed(0)
    reranker = CrossEncoder.from_pretrained("models/base", max_length=64).add_lora(config)
    fill_lora_b(reranker)
    pairs = [(QUERIES[0], document) for document in DOCUMENTS]
    expected_scores = reranker.predict(pairs)
    reranker.save_pretrained("reranker-adapter")

    base = str(tmp_path / "work" / "models" / "base")
    for adapter in ("adapter", "reranker-adapter"):
        assert (
            json.loads((tmp_path / "work" / adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
            == base
        )
    monkeypatch.chdir(tmp_path / "elsewhere")
    loaded = BiEncoder.from_pretrained(tmp_path / "work" / "adapter")
    _assert_outputs_close(_encode(loaded), expected, 1e-6)
    assert loaded.retrieval_config.base_model == base
    loaded_reranker = CrossEncoder.from_pretrained(tmp_path / "work" / "reranker-adapter")
    np.testing.assert_allclose(loaded_reranker.predict(pairs), expected_scores, atol=1e-6)


def test_an_adapter_that_names_a_relative_base_is_saved_again_naming_it_absolutely(
    tiny_model_path, tmp_path, monkeypatch
):
    """An adapter saved by an earlier version with a relative base still loads from its working directory; saved
    again, it names its base by the absolute path."""
    shutil.copytree(tiny_model_path, tmp_path / "models" / "base")
    model = BiEncoder.from_pretrained(tmp_path / "models" / "base")
    model.add_lora(LoraConfig(r=2, target_modules=["query"], lora_dropout=0.0))
    model.save_pretrained(tmp_path / "old")
    adapter_file = tmp_path / "old" / "adapter_config.json"
    adapter_config = json.loads(adapter_file.read_text())
    adapter_file.write_text(json.dumps({**adapter_config, "base_model_name_or_path": "models/base"}))
    monkeypatch.chdir(tmp_path)
    BiEncoder.from_pretrained("old").save_pretrained("new")
    saved = json.loads((tmp_path / "new" / "adapter_config.json").read_text())
    assert saved["base_model_name_or_path"] == str(tmp_path / "models" / "base")


def test_saving_an_adapter_leaves_the_folders_card_as_it_was(tiny_model_path, tmp_path):
    """peft's save_pretrained wrote a placeholder README.md ("[More Information Needed]") into an adapter folder, and
    rewrote the metadata of the library's own card (``base_model`` as the local base path, peft's tags)."""
    from hf_robust_ir.modeling import CrossEncoder

    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"], lora_dropout=0.0)
    shared = BiEncoder.from_pretrained(tiny_model_path).add_lora(lora)
    towers = BiEncoder.from_pretrained(tiny_model_path, separate_towers=True).add_lora(lora)
    reranker = CrossEncoder.from_pretrained(tiny_model_path, max_length=32).add_lora(lora)
    for name, model in (("shared", shared), ("towers", towers), ("reranker", reranker)):
        model.save_pretrained(tmp_path / name)
        assert not list((tmp_path / name).rglob("README.md")), name  # no placeholder, in the towers neither
        card = "---\nbase_model: org/base\nlibrary_name: sentence-transformers\n---\n\n# my retriever\n"
        (tmp_path / name / "README.md").write_text(card)
        model.save_pretrained(tmp_path / name)
        assert (tmp_path / name / "README.md").read_text() == card, name
        assert (tmp_path / name / ("query_encoder" if name == "towers" else "") / "adapter_config.json").is_file()
