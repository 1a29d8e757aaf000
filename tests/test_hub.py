"""Push and download through huggingface_hub's own client against a local Hub-compatible server (tests/hub_server.py).

Nothing in the library is mocked: ``HF_ENDPOINT`` points at the local server and offline mode is turned off for
these tests only.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import uuid

import datasets
import numpy as np
import pytest
import torch
from conftest import perturb_document_tower, randomize_lora_b
from hub_server import LocalHub

import hf_robust_ir
from hf_robust_ir import hub
from hf_robust_ir.callbacks import ModelCardCallback
from hf_robust_ir.data.schema import ROW_FEATURES
from hf_robust_ir.modeling import BiEncoder

QUERIES = ["what is label noise?", "dense retrieval with wrong labels"]
DOCUMENTS = ["Label noise is a wrong label.", "A retriever embeds queries and documents.", "Unrelated text."]


@pytest.fixture()
def local_hub(tmp_path, monkeypatch):
    """A running local Hub; HF_ENDPOINT points at it, offline mode is off, the cache and token are the test's own."""
    from huggingface_hub import constants

    with LocalHub(tmp_path / "hub_storage") as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("HF_HUB_OFFLINE", "0")
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub_cache"))
        monkeypatch.setenv("HF_TOKEN", f"hf_test{uuid.uuid4().hex}")
        monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        # transformers' Trainer pushes through one HfApi it keeps for the process, made with the endpoint of its first
        # use: a server of an earlier test is gone, so each test starts without it
        import transformers.utils.hub

        monkeypatch.setattr(transformers.utils.hub, "_hf_api", None)
        yield server


def _retriever(path, **overrides):
    settings = dict(pooling="cls", normalize=False, query_prefix="query: ", document_prefix="passage: ")
    settings.update(overrides)
    return BiEncoder.from_pretrained(path, **settings)


def _same_embeddings(a, b):
    np.testing.assert_allclose(a.encode_queries(QUERIES), b.encode_queries(QUERIES), atol=1e-5)
    np.testing.assert_allclose(a.encode_documents(DOCUMENTS), b.encode_documents(DOCUMENTS), atol=1e-5)


# ---------------------------------------------------------------------------------------------- ids and paths
@pytest.mark.parametrize("repo_id", ["org/name", "name", "Org-1/model_v2.0"])
def test_valid_repo_ids(repo_id):
    assert hub.validate_repo_id(repo_id) == repo_id


@pytest.mark.parametrize(
    "repo_id, reason",
    [
        ("../name", ".."),
        ("org/..", ".."),
        ("org/../../etc", ".."),
        ("/abs/path", "absolute"),
        ("~/models", "absolute"),
        ("org\\name", "backslash"),
        ("org//name", "more than one"),
        ("org/", "empty part"),
        ("a/b/c", "more than one"),
        ("", "expected"),
        ("org/na me", "letters"),
    ],
)
def test_escaping_repo_ids_are_rejected(repo_id, reason):
    with pytest.raises(ValueError, match="invalid repository id") as error:
        hub.validate_repo_id(repo_id)
    assert reason in str(error.value)


def test_paths_inside_a_repository_cannot_leave_it(tmp_path):
    assert hub.safe_subpath(tmp_path, "1_Pooling") == tmp_path / "1_Pooling"
    for bad in ["../x", "a/../../x", "/etc/passwd", "C:/x", "a\\b", ""]:
        with pytest.raises(ValueError, match="would leave the folder"):
            hub.safe_subpath(tmp_path, bad)


def test_bad_ids_fail_before_any_request(tiny_model_path):
    model = BiEncoder.from_pretrained(tiny_model_path)
    with pytest.raises(ValueError, match="invalid repository id"):
        hub.push_to_hub(model, "../escape")
    with pytest.raises(ValueError, match="invalid repository id"):
        hf_robust_ir.from_pretrained("org/../../escape")
    with pytest.raises(ValueError, match="invalid repository id"):
        hub.download("a/b/c", "somewhere")


def test_safe_defaults():
    assert inspect.signature(hub.from_pretrained).parameters["trust_remote_code"].default is False
    assert inspect.signature(BiEncoder.from_pretrained).parameters["trust_remote_code"].default is False
    assert "*.bin" in hub.PICKLE_PATTERNS and "*.pkl" in hub.PICKLE_PATTERNS


# ---------------------------------------------------------------------------------------------- push and download
def test_push_and_from_pretrained_give_the_same_retriever(tmp_path, tiny_model_path, local_hub):
    from huggingface_hub import ModelCard, snapshot_download

    model = _retriever(tiny_model_path)
    url = hub.push_to_hub(model, "org/tiny-retriever")
    assert "org/tiny-retriever" in url
    stored = local_hub.state.storage / "org" / "tiny-retriever"
    names = {p.relative_to(stored).as_posix() for p in stored.rglob("*") if p.is_file()}
    assert {"README.md", "model.safetensors", "hf_robust_ir_config.json", "modules.json"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pkl")) for n in names)

    folder = snapshot_download("org/tiny-retriever", cache_dir=str(tmp_path / "plain"), endpoint=local_hub.url)
    card = ModelCard.load(f"{folder}/README.md")
    assert card.data.library_name == "sentence-transformers" and "hf_robust_ir" in card.data.tags

    loaded = hf_robust_ir.from_pretrained("org/tiny-retriever")
    config = loaded.retrieval_config
    assert (config.pooling, config.normalize, config.query_prefix, config.document_prefix) == (
        "cls",
        False,
        "query: ",
        "passage: ",
    )
    _same_embeddings(model, loaded)

    # a second push of the same repository is a new commit
    hub.push_to_hub(model, "org/tiny-retriever", commit_message="again")
    assert len(local_hub.state.repos["org/tiny-retriever"]["commits"]) == 3


def test_a_push_to_a_branch_that_does_not_exist_yet_creates_it(tmp_path, tiny_model_path, local_hub):
    model = _retriever(tiny_model_path)
    hub.push_to_hub(model, "org/branched")  # main: the first version
    main_head = local_hub.state.repos["org/branched"]["head"]
    other = _retriever(tiny_model_path, query_prefix="q: ")
    hub.push_to_hub(other, "org/branched", revision="dev")  # the Hub refuses a commit to a missing branch
    assert local_hub.state.repos["org/branched"]["head"] == main_head  # main untouched
    assert set(local_hub.state.repos["org/branched"]["branches"]) == {"dev"}
    on_dev = hf_robust_ir.from_pretrained("org/branched", revision="dev")
    assert on_dev.retrieval_config.query_prefix == "q: "
    assert hf_robust_ir.from_pretrained("org/branched").retrieval_config.query_prefix == "query: "
    hub.push_to_hub(model, "org/branched", revision="dev", commit_message="again")  # the branch exists now
    assert hf_robust_ir.from_pretrained("org/branched", revision="dev").retrieval_config.query_prefix == "query: "
    assert local_hub.state.repos["org/branched"]["head"] == main_head


def test_a_name_without_namespace_is_pushed_to_the_repository_the_hub_made_for_it(tiny_model_path, local_hub):
    """The Hub puts ``trained`` in the token owner's namespace (the local server's is ``user``): the upload goes to
    ``user/trained``, and the card's snippets name it."""
    model = _retriever(tiny_model_path)
    url = hub.push_to_hub(model, "trained")
    assert "user/trained" in url and set(local_hub.state.repos) == {"user/trained"}
    card = (local_hub.state.storage / "user" / "trained" / "README.md").read_text()
    assert 'hf_robust_ir.from_pretrained("user/trained")' in card
    _same_embeddings(model, hf_robust_ir.from_pretrained("user/trained"))


def test_download_command_and_no_pickles(tmp_path, tiny_model_path, local_hub):
    from huggingface_hub import HfApi

    from hf_robust_ir.commands import download as command

    model = _retriever(tiny_model_path)
    hub.push_to_hub(model, "org/with-pickle")
    extra = tmp_path / "extra"
    extra.mkdir()
    torch.save({"weights": torch.zeros(2)}, extra / "pytorch_model.bin")
    HfApi(endpoint=local_hub.url).upload_folder(folder_path=str(extra), repo_id="org/with-pickle")
    assert (local_hub.state.storage / "org" / "with-pickle" / "pytorch_model.bin").exists()

    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    args = parser.parse_args(["org/with-pickle", "--local_dir", str(tmp_path / "local")])
    assert command.run(args) == 0
    files = {p.name for p in (tmp_path / "local").rglob("*") if p.is_file()}
    assert "model.safetensors" in files and "pytorch_model.bin" not in files
    _same_embeddings(model, hf_robust_ir.from_pretrained(tmp_path / "local"))

    args = parser.parse_args(["../escape", "--local_dir", str(tmp_path / "x")])
    assert command.run(args) == 2


def test_lora_pushes_only_the_adapter_with_its_base_model_named(tmp_path, tiny_model_path, local_hub):
    from huggingface_hub import ModelCard
    from peft import LoraConfig

    base = _retriever(tiny_model_path)
    hub.push_to_hub(base, "org/tiny-base")
    model = _retriever(tiny_model_path).add_lora(LoraConfig(r=2, lora_alpha=4, target_modules=["query", "value"]))
    torch.manual_seed(0)
    randomize_lora_b(model)  # a trained adapter, not the identity

    with pytest.raises(ValueError, match="Hub id of its base model"):
        hub.push_to_hub(model, "org/tiny-lora")  # the base is a local folder: name it
    hub.push_to_hub(model, "org/tiny-lora", base_model="org/tiny-base")

    stored = local_hub.state.storage / "org" / "tiny-lora"
    names = {p.name for p in stored.rglob("*") if p.is_file()}
    assert "adapter_model.safetensors" in names and "model.safetensors" not in names
    assert json.loads((stored / "adapter_config.json").read_text())["base_model_name_or_path"] == "org/tiny-base"
    card = ModelCard.load(stored / "README.md")
    assert card.data.base_model == "org/tiny-base"
    assert {"peft", "lora"} <= set(card.data.tags)

    loaded = hf_robust_ir.from_pretrained("org/tiny-lora")
    assert loaded.retrieval_config.base_model == "org/tiny-base"
    _same_embeddings(model, loaded)
    assert not np.allclose(base.encode_queries(QUERIES), loaded.encode_queries(QUERIES), atol=1e-3)


def test_a_lora_reranker_pushes_its_adapter_and_downloads_with_its_base_model(tiny_model_path, local_hub):
    """A reranker's adapter (and its new head) is pushed alone; from_pretrained fetches the base model it names. The
    card says that sentence-transformers' CrossEncoder does not load it (it reads config.json) and how to merge."""
    from huggingface_hub import ModelCard
    from peft import LoraConfig

    from hf_robust_ir.modeling import CrossEncoder

    hub.push_to_hub(_retriever(tiny_model_path), "org/tiny-base")
    torch.manual_seed(0)
    model = CrossEncoder.from_pretrained(tiny_model_path, max_length=64)
    model.add_lora(LoraConfig(r=2, lora_alpha=4, target_modules=["query", "value"], lora_dropout=0.0))
    randomize_lora_b(model)
    hub.push_to_hub(model, "org/tiny-reranker-lora", base_model="org/tiny-base")

    stored = local_hub.state.storage / "org" / "tiny-reranker-lora"
    names = {p.name for p in stored.rglob("*") if p.is_file()}
    assert "adapter_model.safetensors" in names and not names & {"model.safetensors", "config.json"}
    card = str(ModelCard.load(stored / "README.md"))
    assert "`sentence_transformers.CrossEncoder` does not load" in card and ".merge_lora().save_pretrained(" in card
    assert 'model = CrossEncoder("org/tiny-reranker-lora")' not in card

    pairs = [(QUERIES[0], d) for d in DOCUMENTS]
    loaded = hf_robust_ir.from_pretrained("org/tiny-reranker-lora")
    assert isinstance(loaded, CrossEncoder)
    np.testing.assert_allclose(loaded.predict(pairs), model.predict(pairs), atol=1e-6)

    # the card's transformers snippet asks for one label: the base is an encoder, whose config would give two (the
    # snippet's load of the adapter folder is checked in test_cross_encoder)
    assert 'AutoModelForSequenceClassification.from_pretrained("org/tiny-reranker-lora", num_labels=1)' in card


def test_downloaded_configs_that_point_outside_are_rejected(tmp_path, tiny_model_path, local_hub):
    from huggingface_hub import HfApi

    api = HfApi(endpoint=local_hub.url)
    folder = tmp_path / "evil"
    _retriever(tiny_model_path).save_pretrained(folder)
    modules = json.loads((folder / "modules.json").read_text())
    modules[1]["path"] = "../../../outside"
    (folder / "modules.json").write_text(json.dumps(modules))
    api.create_repo("org/evil")
    api.upload_folder(folder_path=str(folder), repo_id="org/evil")
    with pytest.raises(ValueError, match="would leave the folder"):
        hf_robust_ir.from_pretrained("org/evil")

    adapter = tmp_path / "evil-adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tmp_path)}))
    api.create_repo("org/evil-adapter")
    api.upload_folder(folder_path=str(adapter), repo_id="org/evil-adapter")
    with pytest.raises(ValueError, match="invalid repository id"):
        hf_robust_ir.from_pretrained("org/evil-adapter")


def test_a_local_base_model_path_is_never_pushed(tmp_path, tiny_model_path, local_hub):
    from huggingface_hub import ModelCard

    model = _retriever(tiny_model_path)
    assert model.retrieval_config.base_model == tiny_model_path  # loaded from a local folder
    local_card = tmp_path / "card"
    hub.write_model_card(local_card, hub.model_card_info_from_model(model))
    assert tiny_model_path in (local_card / "README.md").read_text()  # a card kept locally may name the folder

    hub.push_to_hub(model, "org/from-folder")
    hub.push_to_hub(model, "org/from-card", card=local_card / "README.md")
    hub.push_to_hub(model, "org/named", base_model="org/tiny-base")
    for name in ("from-folder", "from-card", "named"):
        stored = local_hub.state.storage / "org" / name
        assert [p.name for p in stored.rglob("*") if p.is_file() and tiny_model_path.encode() in p.read_bytes()] == []
    for name in ("from-folder", "from-card"):
        stored = local_hub.state.storage / "org" / name
        assert json.loads((stored / hub.CONFIG_NAME).read_text())["base_model"] is None
        assert "**Base model:** a local model" in (stored / "README.md").read_text()
    named = local_hub.state.storage / "org" / "named"
    assert json.loads((named / hub.CONFIG_NAME).read_text())["base_model"] == "org/tiny-base"
    assert ModelCard.load(named / "README.md").data.base_model == "org/tiny-base"
    assert model.retrieval_config.base_model == tiny_model_path  # the model itself is left as it was


def test_download_fetches_only_what_the_library_loads(tmp_path, local_hub):
    from huggingface_hub import HfApi

    source = tmp_path / "source"
    kept = ["config.json", "model.safetensors", "tokenizer.json", "1_Pooling/config.json"]
    other_formats = [
        "tf_model.h5", "flax_model.msgpack", "rust_model.ot", "model.onnx", "onnx/model_qint8.onnx",
        "model-q4.gguf", "openvino/openvino_model.xml", "openvino_model.xml", "pytorch_model.bin",
    ]  # fmt: skip
    for name in kept + other_formats:
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_text("{}")
    api = HfApi(endpoint=local_hub.url)
    api.create_repo("org/many-formats")
    api.upload_folder(folder_path=str(source), repo_id="org/many-formats")
    folder = hub.download("org/many-formats", cache_dir=tmp_path / "cache")
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == sorted(kept)


@pytest.mark.parametrize("revision", [None, "no-such-branch"])
def test_download_command_reports_a_missing_repository_or_revision_in_one_line(
    tmp_path, tiny_model_path, local_hub, capsys, revision
):
    from hf_robust_ir.commands import download as command

    if revision:
        hub.push_to_hub(_retriever(tiny_model_path), "org/present")
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    repo_id = "org/present" if revision else "org/does-not-exist"
    argv = [repo_id, "--local_dir", str(tmp_path / "local")] + (["--revision", revision] if revision else [])
    capsys.readouterr()
    assert command.run(parser.parse_args(argv)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: could not download {repo_id}: ") and err.count("\n") == 1


# ---------------------------------------------------------------------------------------------- tokens
CORPUS = {f"d{i}": f"document number {i} about topic {i % 5}" for i in range(24)}


def _rows(n=8):
    rows = [
        {
            "query_id": f"q{i}",
            "query": f"topic {i % 5} question {i}",
            "doc_ids": [f"d{i}", f"d{(i + 7) % 24}", f"d{(i + 13) % 24}"],
            "labels": [1.0, 0.0, 0.0],
            "teacher_scores": [],
            "label_source": ["qrels"] * 3,
        }
        for i in range(n)
    ]
    return datasets.Dataset.from_list(rows, features=ROW_FEATURES)


def test_the_hub_token_never_reaches_logs_cards_configs_or_checkpoints(
    tmp_path, tiny_model_path, local_hub, monkeypatch, caplog, capsys
):
    from hf_robust_ir.trainer import RetrievalTrainer, RetrievalTrainingArguments

    planted = f"hf_planted{uuid.uuid4().hex}"
    monkeypatch.setenv("HF_TOKEN", planted)
    caplog.set_level(logging.DEBUG)
    output_dir = tmp_path / "run"
    args = RetrievalTrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=4,
        max_steps=2,
        logging_steps=1,
        save_steps=1,
        save_strategy="steps",
        eval_strategy="steps",
        eval_steps=2,
        report_to=[],
        group_size=3,
        use_cpu=True,
        disable_tqdm=True,
        hub_token=planted,
        hub_model_id="org/trained",
        learning_rate=1e-3,
    )
    model = _retriever(tiny_model_path)
    trainer = RetrievalTrainer(
        model, args, train_dataset=_rows(), corpus=CORPUS, evaluator=lambda m: {"ndcg@10": 0.5, "recall@100": 0.75}
    )
    trainer.add_callback(
        ModelCardCallback(
            loss=trainer.loss,
            base_model=tiny_model_path,
            train_dataset_info={"path": "synthetic rows", "split": "train", "corpus_size": len(CORPUS)},
            eval_dataset_info={"dataset": "synthetic", "split": "test"},
            repo_id="org/trained",
        )
    )
    trainer.train()
    trainer.save_model()
    assert (output_dir / "README.md").exists() and (output_dir / "checkpoint-1" / "README.md").exists()
    hub.push_to_hub(model, "org/trained", card=output_dir / "README.md")

    # the token was used (sent to the server in memory) ...
    assert any(planted in header for header in local_hub.state.auth_headers)
    # ... and written nowhere
    searched = [p for root in (output_dir, local_hub.state.storage) for p in root.rglob("*") if p.is_file()]
    assert len(searched) > 10
    assert [p for p in searched if planted.encode() in p.read_bytes()] == []
    captured = capsys.readouterr()
    assert planted not in captured.out + captured.err + caplog.text
    card = (output_dir / "README.md").read_text()
    assert "hub_token" not in card and "learning_rate" in card


def _push_run(output_dir, planted, local_hub, monkeypatch, **overrides):
    """Arguments of a 2-step run that pushes; transformers' own calls (the repository it makes) reach the local Hub."""
    from huggingface_hub import constants

    from hf_robust_ir.trainer import RetrievalTrainingArguments

    monkeypatch.setattr(constants, "ENDPOINT", local_hub.url)  # what transformers reads
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", f"{local_hub.url}/{{repo_id}}/resolve/{{revision}}/{{filename}}"
    )

    settings = dict(
        output_dir=str(output_dir), per_device_train_batch_size=4, max_steps=2, save_strategy="steps", save_steps=1,
        report_to=[], group_size=3, use_cpu=True, disable_tqdm=True, learning_rate=1e-3, push_to_hub=True,
        hub_token=planted,
    )  # fmt: skip
    settings.update(overrides)
    return RetrievalTrainingArguments(**settings)


@pytest.mark.parametrize("hub_strategy", ["every_save", "checkpoint"])
def test_pushes_during_training_publish_the_retriever_without_pickled_arguments_or_the_token(
    tmp_path, tiny_model_path, local_hub, monkeypatch, hub_strategy
):
    """transformers' push at each save copies the output folder with ``training_args.bin``: a pickle that holds
    ``hub_token``. Each save pushes the retriever's folder instead; ``checkpoint`` adds the last checkpoint."""
    from hf_robust_ir.trainer import RetrievalTrainer

    planted = f"hf_planted{uuid.uuid4().hex}"
    monkeypatch.setenv("HF_TOKEN", planted)
    args = _push_run(
        tmp_path / "run", planted, local_hub, monkeypatch, hub_model_id="org/pushed", hub_strategy=hub_strategy
    )
    model = _retriever(tiny_model_path)
    RetrievalTrainer(model, args, train_dataset=_rows(), corpus=CORPUS).train()

    stored = local_hub.state.storage / "org" / "pushed"
    files = [p for p in stored.rglob("*") if p.is_file()]
    names = {p.relative_to(stored).as_posix() for p in files}
    assert {"README.md", "model.safetensors", "modules.json", hub.CONFIG_NAME} <= names
    assert "training_args.bin" not in {p.name for p in files}
    assert [p for p in files if planted.encode() in p.read_bytes()] == []
    assert ("last-checkpoint/trainer_state.json" in names) == (hub_strategy == "checkpoint")
    _same_embeddings(model, hf_robust_ir.from_pretrained("org/pushed"))  # the weights of the last save


def test_save_model_with_push_to_hub_pushes_to_the_repository_named_after_the_output_folder(
    tmp_path, tiny_model_path, local_hub, monkeypatch
):
    """Without ``hub_model_id``, transformers makes the repository ``<token owner>/<output folder's name>``."""
    from hf_robust_ir.trainer import RetrievalTrainer

    args = _push_run(tmp_path / "my-run", None, local_hub, monkeypatch, save_strategy="no")
    model = _retriever(tiny_model_path)
    trainer = RetrievalTrainer(model, args, train_dataset=_rows(), corpus=CORPUS)
    trainer.train()
    trainer.save_model()
    assert set(local_hub.state.repos) == {"user/my-run"}
    _same_embeddings(model, hf_robust_ir.from_pretrained("user/my-run"))


def test_a_folder_holding_the_token_is_not_uploaded(tmp_path, tiny_model_path, local_hub, monkeypatch):
    planted = f"hf_planted{uuid.uuid4().hex}"
    monkeypatch.setenv("HF_TOKEN", planted)
    model = _retriever(tiny_model_path, query_prefix=planted)  # a token pasted in the wrong place
    with pytest.raises(RuntimeError, match="refusing to upload"):
        hub.push_to_hub(model, "org/leaky")
    assert "org/leaky" not in local_hub.state.repos
    # an upload with a token of its own still never publishes the login's token
    with pytest.raises(RuntimeError, match="refusing to upload"):
        hub.push_to_hub(model, "org/leaky", token=f"hf_other{uuid.uuid4().hex}")
    assert "org/leaky" not in local_hub.state.repos
    assert hub._redact(f"a {planted} b", token="hf_other") == "a <redacted> b"


def test_separate_tower_lora_pushes_no_card_naming_the_local_base_model(tiny_model_path, local_hub):
    """peft writes a placeholder README.md (metadata ``base_model: <local folder>``) into each tower's folder."""
    from peft import LoraConfig

    model = _retriever(tiny_model_path, separate_towers=True)
    model.add_lora(LoraConfig(r=2, lora_alpha=4, target_modules=["query", "value"]))
    hub.push_to_hub(model, "org/tower-lora", base_model="org/tiny-base")
    stored = local_hub.state.storage / "org" / "tower-lora"
    names = {p.relative_to(stored).as_posix() for p in stored.rglob("*") if p.is_file()}
    assert {"query_encoder/adapter_config.json", "document_encoder/adapter_config.json"} <= names
    assert [p.name for p in stored.rglob("*") if p.is_file() and tiny_model_path.encode() in p.read_bytes()] == []


def test_a_given_card_gets_the_base_model_named_at_push(tmp_path, tiny_model_path, local_hub):
    """A card written during training names a local base model only in its text; pushed with base_model, the card's
    metadata names that Hub id as its text and config do."""
    from huggingface_hub import ModelCard

    model = _retriever(tiny_model_path)
    hub.write_model_card(tmp_path / "card", hub.model_card_info_from_model(model))
    hub.push_to_hub(model, "org/given-card", card=tmp_path / "card" / "README.md", base_model="org/tiny-base")
    stored = local_hub.state.storage / "org" / "given-card"
    assert "**Base model:** `org/tiny-base`" in (stored / "README.md").read_text()
    assert json.loads((stored / hub.CONFIG_NAME).read_text())["base_model"] == "org/tiny-base"
    assert ModelCard.load(stored / "README.md").data.base_model == "org/tiny-base"
    for typo in (str(tmp_path / "crad" / "README.md"), tmp_path / "crad" / "README.md"):  # not read as card text
        with pytest.raises(FileNotFoundError, match="crad"):
            hub.push_to_hub(model, "org/given-card", card=typo)


def test_training_data_paths_of_this_machine_are_published_by_name_only(tmp_path, tiny_model_path, local_hub):
    data = tmp_path / "private" / "beir" / "scifact"
    data.mkdir(parents=True)
    info = hub.model_card_info_from_model(
        _retriever(tiny_model_path), datasets=[{"path": str(data), "split": "train", "rows": 809}]
    )
    info.citations = ["see https://example.org/a/b and /not/on/this/machine"]
    hub.push_to_hub(_retriever(tiny_model_path), "org/data-paths", card=info)
    text = (local_hub.state.storage / "org" / "data-paths" / "README.md").read_text()
    assert str(tmp_path) not in text and "| scifact | train | 809 |" in text
    assert "https://example.org/a/b" in text and "/not/on/this/machine" in text  # not paths of this machine


def test_a_push_replaces_the_model_files_of_an_earlier_push(tmp_path, tiny_model_path, local_hub):
    """Pushing another layout to the same repository (towers, then one shared model; a LoRA adapter, then full weights)
    leaves none of the earlier files behind for a loader to pick up instead of the new model."""
    from conftest import save_tiny_bert
    from peft import LoraConfig

    other_path = save_tiny_bert(tmp_path / "other-bert", seed=1)
    hub.push_to_hub(_retriever(tiny_model_path), "org/tiny-base")
    hub.push_to_hub(_retriever(tiny_model_path, separate_towers=True), "org/relaid", base_model="org/tiny-base")
    lora = _retriever(tiny_model_path).add_lora(LoraConfig(r=2, lora_alpha=4, target_modules=["query", "value"]))
    hub.push_to_hub(lora, "org/relaid", base_model="org/tiny-base")
    shared = _retriever(other_path)
    hub.push_to_hub(shared, "org/relaid", base_model="org/tiny-base")

    stored = local_hub.state.storage / "org" / "relaid"
    names = {p.relative_to(stored).as_posix() for p in stored.rglob("*") if p.is_file()}
    assert {"model.safetensors", "README.md", "modules.json"} <= names
    assert not {n for n in names if n.startswith(("query_encoder/", "document_encoder/", "adapter_"))}
    loaded = hf_robust_ir.from_pretrained("org/relaid")
    _same_embeddings(shared, loaded)


def test_a_card_written_during_training_is_pushed_with_usage_snippets_for_the_repository(
    tmp_path, tiny_model_path, local_hub, monkeypatch
):
    """A card written into an output folder before the repository was named (the model's name is the folder's) gets
    snippets naming the repository it is pushed to; run from the Hub, they give the model's scores."""
    import re

    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", local_hub.url)  # what transformers and sentence-transformers read
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", f"{local_hub.url}/{{repo_id}}/resolve/{{revision}}/{{filename}}"
    )
    model = _retriever(tiny_model_path)
    callback = ModelCardCallback(base_model=tiny_model_path)
    args = argparse.Namespace(output_dir=str(tmp_path / "run"), should_save=True)
    callback.on_train_end(args, argparse.Namespace(global_step=0, log_history=[], epoch=0.0), None, model=model)
    assert 'SentenceTransformer("run")' in (tmp_path / "run" / "README.md").read_text()
    hub.push_to_hub(model, "org/from-run", card=tmp_path / "run" / "README.md")

    text = (local_hub.state.storage / "org" / "from-run" / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text[text.index("## Usage") :], re.S)
    expected = model.encode_queries(["what is label noise?"]) @ model.encode_documents(["Label noise is ..."]).T
    for block in blocks:  # sentence-transformers, transformers, hf_robust_ir
        scope = {}
        exec(block, scope)
        np.testing.assert_allclose(np.asarray(scope["scores"]), expected, atol=1e-4)


def test_a_repository_with_only_pickled_weights_is_refused_naming_them(tmp_path, tiny_model_path, local_hub):
    """Pickle files are never downloaded: a repository whose weights are only pickled says so, rather than failing in
    transformers on a downloaded folder said to lack ``pytorch_model.bin``."""
    from huggingface_hub import HfApi

    from hf_robust_ir.commands import download as command

    source = tmp_path / "pickled"
    _retriever(tiny_model_path).save_pretrained(source)
    weights = (source / "model.safetensors").read_bytes()
    (source / "model.safetensors").unlink()
    (source / "pytorch_model.bin").write_bytes(weights)  # what matters is the name: it is never fetched
    api = HfApi(endpoint=local_hub.url)
    api.create_repo("org/pickled")
    api.upload_folder(folder_path=str(source), repo_id="org/pickled")
    message = "org/pickled has no safetensors weights (only ['pytorch_model.bin'], never downloaded: pickle files "
    with pytest.raises(ValueError) as error:
        hf_robust_ir.from_pretrained("org/pickled")
    assert str(error.value).startswith(message)

    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    assert command.run(parser.parse_args(["org/pickled", "--local_dir", str(tmp_path / "local")])) == 2


def test_the_train_command_pushes_the_card_with_the_scores_after_training(
    tmp_path, tiny_model_path, small_beir, local_hub, monkeypatch, capsys
):
    """The push at the end of the train command carried a card without the scores measured after training: they
    were written into the local card only, after the push."""
    import yaml
    from huggingface_hub import ModelCard, constants

    from hf_robust_ir.cli import main

    monkeypatch.setattr(constants, "ENDPOINT", local_hub.url)  # what transformers reads
    config = {
        "model_name_or_path": tiny_model_path, "data_dir": str(small_beir), "num_negatives": 2,
        "mining_range_max": 10, "group_size": 2, "per_device_train_batch_size": 4, "max_steps": 1,
        "output_dir": str(tmp_path / "run"), "save_strategy": "no", "report_to": "none", "use_cpu": True,
        "encode_batch_size": 32, "push_to_hub": True, "hub_model_id": "org/cli-run",
    }  # fmt: skip
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", "--config", str(tmp_path / "recipe.yaml")]) == 0
    after = json.loads(capsys.readouterr().out)["after"]["after_ndcg@10"]
    for card_path in (tmp_path / "run" / "README.md", local_hub.state.storage / "org" / "cli-run" / "README.md"):
        card = ModelCard.load(card_path)
        reported = {result.metric_type: result.metric_value for result in card.data.eval_results or []}
        assert reported.get("ndcg_at_10") == pytest.approx(after), card_path


def test_separate_towers_of_their_own_weights_push_adapters_that_load_on_their_own_towers(
    tmp_path, tiny_model_path, local_hub
):
    """Towers trained apart, pushed with their towers, then given LoRA adapters: each pushed adapter names the base
    repository, and loads again on that repository's tower of its own name (the query adapter on the query tower's
    weights, not on the document tower's nor on a folder without weights)."""
    from peft import LoraConfig

    torch.manual_seed(0)
    towers = BiEncoder.from_pretrained(tiny_model_path, separate_towers=True)
    perturb_document_tower(towers)
    towers.save_pretrained(tmp_path / "towers")
    hub.push_to_hub(BiEncoder.from_pretrained(tmp_path / "towers"), "org/towers-base")
    model = BiEncoder.from_pretrained(tmp_path / "towers")
    model.add_lora(LoraConfig(r=2, lora_alpha=4, target_modules=["query", "value"], lora_dropout=0.0))
    randomize_lora_b(model)
    hub.push_to_hub(model, "org/towers-lora", base_model="org/towers-base")

    stored = local_hub.state.storage / "org" / "towers-lora"
    for tower in ("query_encoder", "document_encoder"):
        adapter_config = json.loads((stored / tower / "adapter_config.json").read_text())
        assert adapter_config["base_model_name_or_path"] == "org/towers-base"
    loaded = hf_robust_ir.from_pretrained("org/towers-lora")
    assert loaded.retrieval_config.separate_towers
    _same_embeddings(model, loaded)


def test_separate_tower_adapters_on_two_unrelated_base_models_are_refused_at_push(tmp_path, tiny_model_path, local_hub):
    """One Hub id names the base of both towers: towers on two unrelated models are refused before any upload."""
    from conftest import save_tiny_bert
    from peft import LoraConfig
    from transformers import AutoModel

    towers = BiEncoder.from_pretrained(tiny_model_path, separate_towers=True)
    other = AutoModel.from_pretrained(save_tiny_bert(tmp_path / "other", seed=3), add_pooling_layer=False)
    model = BiEncoder(towers.query_encoder, towers.tokenizer, towers.retrieval_config, other)
    model.add_lora(LoraConfig(r=2, lora_alpha=4, target_modules=["query", "value"]))
    with pytest.raises(ValueError, match="different base models .*merge_lora"):
        hub.push_to_hub(model, "org/mixed-lora", base_model="org/tiny-base")
    assert "org/mixed-lora" not in local_hub.state.repos
