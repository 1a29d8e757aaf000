"""BiEncoder and pooling: exact pooling values, save/load in transformers and sentence-transformers layouts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import perturb_document_tower
from sentence_transformers import SentenceTransformer
from transformers import AutoModel, AutoTokenizer

from hf_robust_ir.modeling import BiEncoder, BiEncoderConfig, pool
from hf_robust_ir.modeling.pooling import POOLING_MODES

TEXTS = [
    "what causes label noise in retrieval datasets",
    "bm25",
    "dense retrievers map queries and passages into one vector space so that relevant pairs lie close together",
    "hard negatives",
    "a false negative is a relevant passage mined as a negative",
]


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _manual_embeddings(folder: str | Path, texts: list[str], pooling: str, normalize: bool) -> np.ndarray:
    """Embeddings computed from a plain ``transformers.AutoModel`` with pooling written out here."""
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModel.from_pretrained(str(folder)).eval()
    out = []
    for text in texts:  # one at a time: no padding, so every pooling is a plain slice
        batch = tokenizer([text], return_tensors="pt")
        with torch.no_grad():
            hidden = model(**batch).last_hidden_state[0]
        if pooling == "mean":
            out.append(hidden.mean(0))
        elif pooling == "cls":
            out.append(hidden[0])
        else:
            out.append(hidden[-1])
    embeddings = torch.stack(out).numpy()
    return _normalize(embeddings) if normalize else embeddings


# ---------------------------------------------------------------- pooling
TOKENS = torch.tensor(
    [
        [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]],
        [[7.0, 8.0], [9.0, 10.0], [11.0, 12.0]],
    ]
)


def test_pooling_right_padding():
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert torch.equal(pool(TOKENS, mask, "mean"), torch.tensor([[2.0, 3.0], [9.0, 10.0]]))
    assert torch.equal(pool(TOKENS, mask, "cls"), torch.tensor([[1.0, 2.0], [7.0, 8.0]]))
    assert torch.equal(pool(TOKENS, mask, "lasttoken"), torch.tensor([[3.0, 4.0], [11.0, 12.0]]))


def test_pooling_left_padding():
    mask = torch.tensor([[0, 1, 1], [0, 0, 1]])
    assert torch.equal(pool(TOKENS, mask, "mean"), torch.tensor([[4.0, 5.0], [11.0, 12.0]]))
    assert torch.equal(pool(TOKENS, mask, "lasttoken"), torch.tensor([[5.0, 6.0], [11.0, 12.0]]))
    # the first token that is not padding, as sentence-transformers takes it
    assert torch.equal(pool(TOKENS, mask, "cls"), torch.tensor([[3.0, 4.0], [11.0, 12.0]]))


def test_pooling_a_row_without_tokens_gives_zeros_as_sentence_transformers_does():
    mask = torch.tensor([[0, 0, 0], [1, 1, 0]])
    assert torch.equal(pool(TOKENS, mask, "lasttoken"), torch.tensor([[0.0, 0.0], [9.0, 10.0]]))
    assert torch.equal(pool(TOKENS, mask, "mean"), torch.tensor([[0.0, 0.0], [8.0, 9.0]]))


def test_pooling_unknown_mode():
    with pytest.raises(ValueError, match="max"):
        pool(TOKENS, torch.ones(2, 3), "max")


# ---------------------------------------------------------------- the real MiniLM against sentence-transformers
@pytest.fixture(scope="module")
def minilm_reference(real_model_path):
    return SentenceTransformer(real_model_path, device="cpu").encode(TEXTS, convert_to_numpy=True)


def test_minilm_matches_sentence_transformers(real_model_path, minilm_reference):
    model = BiEncoder.from_pretrained(real_model_path)
    config = model.retrieval_config
    assert (config.pooling, config.normalize, config.query_prefix) == ("mean", True, "")
    np.testing.assert_allclose(model.encode_documents(TEXTS, batch_size=2), minilm_reference, atol=1e-5)
    np.testing.assert_allclose(model.encode_queries(TEXTS), minilm_reference, atol=1e-5)


def test_minilm_saved_folder_loads_everywhere(real_model_path, minilm_reference, tmp_path):
    model = BiEncoder.from_pretrained(
        real_model_path, query_prefix="query: ", temperature=0.02, query_max_length=64, document_max_length=128
    )
    queries, documents = model.encode_queries(TEXTS), model.encode_documents(TEXTS)
    # the query prefix is really prepended, and documents are unchanged
    prefixed = SentenceTransformer(real_model_path, device="cpu").encode(["query: " + t for t in TEXTS])
    np.testing.assert_allclose(queries, prefixed, atol=1e-5)
    np.testing.assert_allclose(documents, minilm_reference, atol=1e-5)
    assert np.abs(queries - documents).max() > 1e-3

    model.save_pretrained(tmp_path)
    st = SentenceTransformer(str(tmp_path), device="cpu")
    np.testing.assert_allclose(st.encode(TEXTS, prompt_name="query"), queries, atol=1e-5)
    np.testing.assert_allclose(st.encode(TEXTS, prompt_name="document"), documents, atol=1e-5)
    np.testing.assert_allclose(st.encode(TEXTS), documents, atol=1e-5)

    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path))
    encoder = AutoModel.from_pretrained(str(tmp_path)).eval()
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = encoder(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    manual = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()
    np.testing.assert_allclose(manual, documents, atol=1e-5)

    reloaded = BiEncoder.from_pretrained(tmp_path)
    assert reloaded.retrieval_config == model.retrieval_config
    config = reloaded.retrieval_config
    assert (config.pooling, config.normalize) == ("mean", True)
    assert (config.query_prefix, config.document_prefix) == ("query: ", "")
    assert (config.temperature, config.query_max_length, config.document_max_length) == (0.02, 64, 128)
    np.testing.assert_allclose(reloaded.encode_queries(TEXTS), queries, atol=1e-6)
    np.testing.assert_allclose(reloaded.encode_documents(TEXTS), documents, atol=1e-6)


# ---------------------------------------------------------------- tiny random BERT
def test_tiny_mean_embeddings_match_manual_pooling(tiny_model_path):
    model = BiEncoder.from_pretrained(tiny_model_path)
    expected = _manual_embeddings(tiny_model_path, TEXTS, "mean", normalize=True)
    np.testing.assert_allclose(model.encode_documents(TEXTS, batch_size=2), expected, atol=1e-5)


def test_separate_towers_round_trip(tiny_model_path, tmp_path):
    model = BiEncoder.from_pretrained(tiny_model_path, separate_towers=True)
    assert model.document_encoder is not model.query_encoder
    # both towers start from the same weights
    np.testing.assert_allclose(model.encode_queries(TEXTS), model.encode_documents(TEXTS), atol=1e-6)

    torch.manual_seed(1)
    perturb_document_tower(model)
    queries, documents = model.encode_queries(TEXTS), model.encode_documents(TEXTS)
    assert np.abs(queries - documents).max() > 1e-2
    # perturbing the document tower left the query tower alone
    np.testing.assert_allclose(queries, _manual_embeddings(tiny_model_path, TEXTS, "mean", True), atol=1e-5)

    model.save_pretrained(tmp_path)
    assert (tmp_path / "query_encoder" / "model.safetensors").exists()
    assert (tmp_path / "document_encoder" / "model.safetensors").exists()
    assert not (tmp_path / "model.safetensors").exists()

    reloaded = BiEncoder.from_pretrained(tmp_path)
    assert reloaded.retrieval_config.separate_towers
    np.testing.assert_allclose(reloaded.encode_queries(TEXTS), queries, atol=1e-6)
    np.testing.assert_allclose(reloaded.encode_documents(TEXTS), documents, atol=1e-6)

    st_query = SentenceTransformer(str(tmp_path / "query_encoder"), device="cpu")
    st_document = SentenceTransformer(str(tmp_path / "document_encoder"), device="cpu")
    np.testing.assert_allclose(st_query.encode(TEXTS), queries, atol=1e-5)
    np.testing.assert_allclose(st_document.encode(TEXTS), documents, atol=1e-5)


def test_a_shared_model_saved_over_separate_towers_loads_itself(tiny_model_path, tmp_path):
    """Saving a shared model into a folder that held separate towers leaves query_encoder/ behind; loading read that
    older tower instead of the model saved last."""
    towers = BiEncoder.from_pretrained(tiny_model_path, separate_towers=True)
    with torch.no_grad():
        for parameter in towers.parameters():
            parameter.add_(0.1)
    towers.save_pretrained(tmp_path)
    BiEncoder.from_pretrained(tiny_model_path).save_pretrained(tmp_path)
    assert (tmp_path / "query_encoder").is_dir()
    reloaded = BiEncoder.from_pretrained(tmp_path)
    expected = _manual_embeddings(tiny_model_path, TEXTS, "mean", True)
    np.testing.assert_allclose(reloaded.encode_queries(TEXTS), expected, atol=1e-5)
    np.testing.assert_allclose(reloaded.encode_documents(TEXTS), expected, atol=1e-5)
    # without hf_robust_ir_config.json, the top-level model (what sentence-transformers loads) is read too
    (tmp_path / "hf_robust_ir_config.json").unlink()
    np.testing.assert_allclose(BiEncoder.from_pretrained(tmp_path).encode_queries(TEXTS), expected, atol=1e-5)


@pytest.mark.parametrize("pooling", ["cls", "lasttoken"])
def test_pooling_saved_for_sentence_transformers(tiny_model_path, tmp_path, pooling):
    model = BiEncoder.from_pretrained(tiny_model_path, pooling=pooling)
    embeddings = model.encode_documents(TEXTS, batch_size=2)
    np.testing.assert_allclose(embeddings, _manual_embeddings(tiny_model_path, TEXTS, pooling, True), atol=1e-5)
    # the modes really differ on this model, so a wrong mode could not pass
    assert np.abs(embeddings - _manual_embeddings(tiny_model_path, TEXTS, "mean", True)).max() > 1e-2

    model.save_pretrained(tmp_path)
    pooling_config = json.loads((tmp_path / "1_Pooling" / "config.json").read_text())
    assert pooling_config["pooling_mode"] == pooling
    st = SentenceTransformer(str(tmp_path), device="cpu")
    np.testing.assert_allclose(st.encode(TEXTS, batch_size=2), embeddings, atol=1e-5)
    assert BiEncoder.from_pretrained(tmp_path).retrieval_config.pooling == pooling


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}, "cls"),
        ({"pooling_mode": ["lasttoken"]}, "lasttoken"),
        ({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": True}, "several modes concatenated"),
        ({"pooling_mode_mean_tokens": False, "pooling_mode_max_tokens": True}, "does not pool with"),
        ({"pooling_mode": ["mean", "max"]}, "unsupported sentence-transformers pooling mode"),
        ({"pooling_mode": "weightedmean"}, "unsupported sentence-transformers pooling mode"),
    ],
)
def test_a_sentence_transformers_pooling_config_is_read_or_refused(tiny_model_path, tmp_path, settings, expected):
    BiEncoder.from_pretrained(tiny_model_path).save_pretrained(tmp_path)
    (tmp_path / "hf_robust_ir_config.json").unlink()  # the folder as sentence-transformers would have it
    pooling_config = tmp_path / "1_Pooling" / "config.json"
    pooling_config.write_text(json.dumps({"word_embedding_dimension": 32, **settings}))
    if expected in POOLING_MODES:
        assert BiEncoder.from_pretrained(tmp_path).retrieval_config.pooling == expected
    else:  # before, the first supported flag won: mean pooling, other embeddings than sentence-transformers'
        with pytest.raises(ValueError, match=expected) as caught:
            BiEncoder.from_pretrained(tmp_path)
        assert str(pooling_config) in str(caught.value)


def test_unnormalized_dot_product_and_temperature(tiny_model_path, tmp_path):
    model = BiEncoder.from_pretrained(tiny_model_path, normalize=False, temperature=0.5)
    queries, documents = model.encode_queries(TEXTS[:2]), model.encode_documents(TEXTS)
    np.testing.assert_allclose(documents, _manual_embeddings(tiny_model_path, TEXTS, "mean", False), atol=1e-5)
    assert np.abs(np.linalg.norm(documents, axis=1) - 1).max() > 1e-2

    scores = model.similarity(torch.from_numpy(queries), torch.from_numpy(documents))
    assert scores.shape == (2, len(TEXTS))
    np.testing.assert_allclose(scores.numpy(), queries @ documents.T / 0.5, rtol=1e-5, atol=1e-5)

    model.save_pretrained(tmp_path)
    modules = json.loads((tmp_path / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[-1] for m in modules] == ["Transformer", "Pooling"]
    assert not (tmp_path / "2_Normalize").exists()
    st = SentenceTransformer(str(tmp_path), device="cpu")
    assert st.similarity_fn_name == "dot"
    np.testing.assert_allclose(st.encode(TEXTS), documents, atol=1e-5)
    reloaded = BiEncoder.from_pretrained(tmp_path)
    assert not reloaded.retrieval_config.normalize
    assert reloaded.retrieval_config.temperature == 0.5


def test_forward_returns_embeddings_of_tokenized_batches(tiny_model_path):
    model = BiEncoder.from_pretrained(tiny_model_path, query_prefix="q: ").eval()
    with torch.no_grad():
        out = model(query=model.tokenize(TEXTS[:2], "query"), document=model.tokenize(TEXTS, "document"))
    assert set(out) == {"query_embeddings", "document_embeddings"}
    np.testing.assert_allclose(out["query_embeddings"].numpy(), model.encode_queries(TEXTS[:2]), atol=1e-5)
    np.testing.assert_allclose(out["document_embeddings"].numpy(), model.encode_documents(TEXTS), atol=1e-5)
    with_prefix = _manual_embeddings(tiny_model_path, ["q: " + t for t in TEXTS[:2]], "mean", True)
    np.testing.assert_allclose(out["query_embeddings"].numpy(), with_prefix, atol=1e-5)


def test_encode_keeps_input_order(tiny_model_path):
    model = BiEncoder.from_pretrained(tiny_model_path)
    lengths = [len(model.tokenizer(t)["input_ids"]) for t in TEXTS]
    assert lengths != sorted(lengths, reverse=True)  # so the length sort really reorders
    batched = model.encode_documents(TEXTS, batch_size=2)
    one_by_one = np.concatenate([model.encode_documents([t]) for t in TEXTS])
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)
    assert model.encode_documents([]).shape == (0, 32)


def test_bf16_encode_close_to_fp32(tiny_model_path):
    model = BiEncoder.from_pretrained(tiny_model_path)
    fp32 = model.encode_documents(TEXTS)
    bf16 = model.encode_documents(TEXTS, bf16=True)
    assert bf16.dtype == np.float32
    cosine = (_normalize(fp32) * _normalize(bf16)).sum(1)
    assert cosine.min() > 0.99


def test_max_lengths_capped_and_applied(tiny_model_path):
    model = BiEncoder.from_pretrained(tiny_model_path, query_max_length=4, document_max_length=1000)
    assert model.retrieval_config.document_max_length == 128  # the tiny model's position embeddings
    assert model.tokenize(TEXTS, "query")["input_ids"].shape[1] == 4
    truncated = _manual_embeddings(tiny_model_path, ["what causes"], "mean", True)  # [CLS] what causes [SEP]
    np.testing.assert_allclose(model.encode_queries(TEXTS[:1]), truncated, atol=1e-5)


def test_one_text_given_as_a_string_is_refused(tiny_model_path):
    """A str is a sequence of characters: it would be embedded as one text per character."""
    model = BiEncoder.from_pretrained(tiny_model_path)
    for call in (
        lambda: model.encode("label noise"),
        lambda: model.encode_queries("label noise"),
        lambda: model.tokenize("label noise", "document"),
    ):
        with pytest.raises(TypeError, match="expected a list of texts, got a str: wrap one text in a list"):
            call()
    one = model.encode_queries(["label noise"])
    assert one.shape == (1, 32)
    np.testing.assert_allclose(one, _manual_embeddings(tiny_model_path, ["label noise"], "mean", True), atol=1e-5)


@pytest.mark.parametrize("batch_size", [0, -1, 2.5])
def test_a_batch_size_below_one_is_refused(tiny_model_path, batch_size):
    """A batch size of -1 ran no batch and returned the uninitialized output buffer as embeddings."""
    model = BiEncoder.from_pretrained(tiny_model_path)
    with pytest.raises(ValueError, match="batch_size must be a whole number >= 1"):
        model.encode_documents(["label noise", "weak labels"], batch_size=batch_size)
    np.testing.assert_allclose(
        model.encode_documents(["label noise", "weak labels"], batch_size=np.int64(1)),
        model.encode_documents(["label noise", "weak labels"]),
        atol=1e-5,
    )


# ---------------------------------------------------------------- errors
def test_missing_folder_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        BiEncoder.from_pretrained(tmp_path / "does-not-exist")


def test_unknown_option_error(tiny_model_path):
    with pytest.raises(TypeError, match="poolng"):
        BiEncoder.from_pretrained(tiny_model_path, poolng="cls")


def test_bad_pooling_and_temperature_errors(tiny_model_path):
    with pytest.raises(ValueError, match="pooling"):
        BiEncoder.from_pretrained(tiny_model_path, pooling="max")
    with pytest.raises(ValueError, match="temperature"):
        BiEncoderConfig(temperature=0)


@pytest.mark.parametrize("length", [0, -5, 2.5])
def test_a_max_length_below_one_is_refused(tiny_model_path, length):
    """A max length of 0 truncated nothing (past the 128 positions of the tiny model) and -5 failed inside the
    tokenizer with an OverflowError."""
    for name in ("query_max_length", "document_max_length"):
        with pytest.raises(ValueError, match=f"{name} must be a whole number >= 1, got {length}"):
            BiEncoder.from_pretrained(tiny_model_path, **{name: length})
    model = BiEncoder.from_pretrained(tiny_model_path)
    with pytest.raises(ValueError, match=f"max_length must be a whole number >= 1, got {length}"):
        model.encode_queries(TEXTS, max_length=length)
    # [CLS] what [SEP]: a max length of 3 keeps one word of the first text
    np.testing.assert_allclose(
        model.encode_queries(TEXTS[:1], max_length=3),
        _manual_embeddings(tiny_model_path, ["what"], "mean", True),
        atol=1e-5,
    )


def test_tower_arguments_must_agree(tiny_model_path):
    model = BiEncoder.from_pretrained(tiny_model_path)
    with pytest.raises(ValueError, match="document_encoder"):
        BiEncoder(model.query_encoder, model.tokenizer, BiEncoderConfig(separate_towers=True))
    with pytest.raises(ValueError, match="separate_towers"):
        BiEncoder(model.query_encoder, model.tokenizer, BiEncoderConfig(), document_encoder=model.query_encoder)


def test_unknown_kind_error(tiny_model_path):
    model = BiEncoder.from_pretrained(tiny_model_path, query_prefix="query: ")
    # "queries" is not "query": it must not silently get the document prefix, length and tower
    for call in (
        lambda: model.encode(TEXTS, kind="queries"),
        lambda: model.tokenize(TEXTS, "passage"),
        lambda: model.embed(model.tokenize(TEXTS, "document"), "queries"),
    ):
        with pytest.raises(ValueError, match="kind"):
            call()


def test_a_max_length_past_the_models_positions_is_refused(tiny_model_path):
    """The tiny model has 128 positions: 200 tokens would fail inside the embeddings with an index error."""
    model = BiEncoder.from_pretrained(tiny_model_path)
    long_text = " ".join(["noise"] * 300)
    assert model.encode([long_text], "document", max_length=128).shape[0] == 1
    with pytest.raises(ValueError, match="document max_length 200 exceeds the 128 tokens this model reads"):
        model.encode([long_text], "document", max_length=200)
    unchecked = BiEncoder(model.query_encoder, model.tokenizer, BiEncoderConfig(query_max_length=300))
    with pytest.raises(ValueError, match="query max_length 300 exceeds the 128 tokens"):
        unchecked.encode_queries([long_text])


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("modules.json", '{"0": {"type": "Transformer"}}', "modules.json: expected a JSON list, got dict"),
        (
            "modules.json",
            '["sentence_transformers.models.Transformer"]',
            "modules.json: entry 0 should be a JSON object",
        ),
        ("modules.json", '[{"type": "Transformer",}]', "modules.json, line 1: not valid JSON (column 25"),
        (
            "hf_robust_ir_config.json",
            '{"pooling": "mean"\n"normalize": true}',
            "hf_robust_ir_config.json, line 2: not valid JSON",
        ),
        (
            "config_sentence_transformers.json",
            "[]",
            "config_sentence_transformers.json: expected a JSON object, got list",
        ),
    ],
)
def test_a_broken_config_file_is_named_with_what_is_wrong(tiny_model_path, tmp_path, capsys, name, content, message):
    import hf_robust_ir
    from hf_robust_ir.cli import main

    BiEncoder.from_pretrained(tiny_model_path).save_pretrained(tmp_path)
    if name != "hf_robust_ir_config.json":  # a sentence-transformers folder, read through its own files
        (tmp_path / "hf_robust_ir_config.json").unlink()
    (tmp_path / name).write_text(content)
    for load in (BiEncoder.from_pretrained, hf_robust_ir.from_pretrained):
        with pytest.raises(ValueError) as error:
            load(tmp_path)
        assert str(error.value).startswith(str(tmp_path / name)) and message in str(error.value)
    # on the command line: one "error:" line naming the file, status 2, no traceback
    beir = tmp_path / "beir"
    (beir / "qrels").mkdir(parents=True)
    (beir / "corpus.jsonl").write_text('{"_id": "d1", "title": "", "text": "a passage"}\n')
    (beir / "queries.jsonl").write_text('{"_id": "q1", "text": "a query"}\n')
    (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    capsys.readouterr()
    assert main(["eval", "--model", str(tmp_path), "--data", str(beir), "--quiet"]) == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith(f"error: {tmp_path / name}")


def test_a_folder_without_a_model_is_named_before_any_tokenizer_loads(tmp_path, capsys):
    """An empty folder (or a data folder passed by mistake) failed deep in the tokenizer with a message about
    sentencepiece; the CLI printed that traceback."""
    from hf_robust_ir.cli import main
    from hf_robust_ir.modeling import CrossEncoder

    (tmp_path / "empty").mkdir()
    for load in (BiEncoder.from_pretrained, CrossEncoder.from_pretrained):
        with pytest.raises(FileNotFoundError, match="is not a model folder"):
            load(tmp_path / "empty")
    beir = tmp_path / "beir"
    (beir / "qrels").mkdir(parents=True)
    (beir / "corpus.jsonl").write_text('{"_id": "d1", "text": "a passage"}\n')
    (beir / "queries.jsonl").write_text('{"_id": "q1", "text": "a query"}\n')
    (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    assert main(["eval", "--model", str(tmp_path / "empty"), "--data", str(beir), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "is not a model folder" in err[-1] and "Traceback" not in "".join(err)


def test_a_config_file_that_is_not_utf8_or_is_a_folder_is_named(tiny_model_path, tmp_path, capsys):
    """A Latin-1 config file raised a bare UnicodeDecodeError and a folder in a file's place an IsADirectoryError, both
    as a traceback on the command line."""
    from hf_robust_ir.cli import main
    from hf_robust_ir.json_files import read_json_file

    latin1 = tmp_path / "latin1.json"
    latin1.write_bytes('{"name": "Müller"}'.encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1.json: not UTF-8 text \(byte 11 is 0xfc\)"):
        read_json_file(latin1)
    (tmp_path / "folder.json").mkdir()
    with pytest.raises(ValueError, match="folder.json: is a folder, not a JSON file"):
        read_json_file(tmp_path / "folder.json")

    model = tmp_path / "model"
    BiEncoder.from_pretrained(tiny_model_path).save_pretrained(model)
    (model / "hf_robust_ir_config.json").write_bytes('{"pooling": "mean", "query_prefix": "Frage: ä"}'.encode("cp1252"))
    with pytest.raises(ValueError, match="hf_robust_ir_config.json: not UTF-8 text"):
        BiEncoder.from_pretrained(model)
    beir = tmp_path / "beir"
    (beir / "qrels").mkdir(parents=True)
    (beir / "corpus.jsonl").write_text('{"_id": "d1", "title": "", "text": "a passage"}\n')
    (beir / "queries.jsonl").write_text('{"_id": "q1", "text": "a query"}\n')
    (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    capsys.readouterr()
    assert main(["eval", "--model", str(model), "--data", str(beir), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.splitlines()[-1].startswith(f"error: {model / 'hf_robust_ir_config.json'}")
