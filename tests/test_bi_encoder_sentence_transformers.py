"""BiEncoder and sentence-transformers folders: query truncation after a save, modules a BiEncoder cannot reproduce."""

from __future__ import annotations

import json
import logging
import re

import numpy as np
import pytest
from conftest import perturb_document_tower
from sentence_transformers import SentenceTransformer, models

from hf_robust_ir import hub
from hf_robust_ir.modeling import BiEncoder

# "query: " + this is far longer than 6 tokens; its first 6 are [CLS] query : what are [SEP]
LONG_QUERY = "what are the known causes of label noise in dense retrieval training sets built from click logs"
SHORT_LENGTHS = dict(query_prefix="query: ", query_max_length=6, document_max_length=64)


def test_truncated_queries_match_sentence_transformers_once_max_seq_length_is_set(tiny_model_path, tmp_path, caplog):
    model = BiEncoder.from_pretrained(tiny_model_path, **SHORT_LENGTHS)
    with caplog.at_level(logging.WARNING, logger="hf_robust_ir.modeling.bi_encoder"):
        model.save_pretrained(tmp_path / "model")
    assert "query_max_length=6 differs from document_max_length=64" in caplog.text
    assert "`model.max_seq_length = 6`" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hf_robust_ir.modeling.bi_encoder"):
        model.save_pretrained(tmp_path / "checkpoint-2")
    assert "max_seq_length" not in caplog.text  # once per model, not at every checkpoint

    ours = model.encode_queries([LONG_QUERY])
    # truncated at 6 tokens, the long query is "query: what are" (exactly 6 tokens, nothing cut)
    np.testing.assert_allclose(ours, model.encode_queries(["what are"]), atol=1e-6)
    st = SentenceTransformer(str(tmp_path / "model"), device="cpu")
    assert st.max_seq_length == 64  # one max length: the document one
    assert np.abs(st.encode([LONG_QUERY], prompt_name="query") - ours).max() > 1e-2  # reads 64 tokens of the query
    st.max_seq_length = 6
    np.testing.assert_allclose(st.encode([LONG_QUERY], prompt_name="query"), ours, atol=1e-5)

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hf_robust_ir.modeling.bi_encoder"):
        BiEncoder.from_pretrained(tiny_model_path, query_max_length=32, document_max_length=32).save_pretrained(
            tmp_path / "same"
        )
    assert "max_seq_length" not in caplog.text  # equal lengths: nothing to warn about


def test_card_usage_snippets_truncate_queries_at_the_query_max_length(tiny_model_path, tmp_path):
    model = BiEncoder.from_pretrained(tiny_model_path, **SHORT_LENGTHS)
    model.save_pretrained(tmp_path / "model")
    text = hub.usage_snippets(hub.model_card_info_from_model(model, repo_id=str(tmp_path / "model")))
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert "model.max_seq_length = 6" in blocks[0] and "model.max_seq_length = 64" in blocks[0]
    st_scope, hf_scope = {}, {}
    exec(blocks[0], st_scope)  # sentence-transformers
    exec(blocks[1], hf_scope)  # transformers
    # "query: what is label noise?" is 9 tokens, cut at 6: the snippets must cut it too
    query = model.encode_queries(["what is label noise?"])
    assert np.abs(query - model.encode_queries(["what is label noise?"], max_length=9)).max() > 1e-2
    np.testing.assert_allclose(st_scope["queries"], query, atol=1e-5)
    np.testing.assert_allclose(hf_scope["queries"].numpy(), query, atol=1e-5)
    expected = query @ model.encode_documents(["Label noise is ..."]).T
    np.testing.assert_allclose(np.asarray(st_scope["scores"]), expected, atol=1e-4)
    np.testing.assert_allclose(hf_scope["scores"].numpy(), expected, atol=1e-4)


def _save_sentence_transformer(folder, tiny_model_path, *extra, include_prompt=True):
    transformer = models.Transformer(tiny_model_path)
    pooling = models.Pooling(32, "mean", include_prompt=include_prompt)
    SentenceTransformer(modules=[transformer, pooling, *extra], device="cpu").save(str(folder))
    return folder


def test_sentence_transformers_modules_a_bi_encoder_cannot_reproduce_are_refused(tiny_model_path, tmp_path):
    dense = _save_sentence_transformer(tmp_path / "dense", tiny_model_path, models.Dense(32, 16), models.Normalize())
    with pytest.raises(ValueError, match=r"/dense: .*\.Dense'\] are not supported"):
        BiEncoder.from_pretrained(dense)

    no_prompt = _save_sentence_transformer(tmp_path / "no-prompt", tiny_model_path, include_prompt=False)
    with pytest.raises(ValueError, match=r"no-prompt.*include_prompt=false"):
        BiEncoder.from_pretrained(no_prompt)

    # Transformer + Pooling + Normalize is what a BiEncoder is: it loads with the same embeddings
    plain = _save_sentence_transformer(tmp_path / "plain", tiny_model_path, models.Normalize())
    texts = ["hello world", "label noise"]
    np.testing.assert_allclose(
        BiEncoder.from_pretrained(plain).encode_documents(texts),
        SentenceTransformer(str(plain), device="cpu").encode(texts),
        atol=1e-5,
    )


def test_lowercasing_folders_load_only_with_a_tokenizer_that_lowercases(tiny_model_path, tmp_path):
    """sentence-transformers lowercases texts before tokenizing a folder whose sentence_bert_config.json says
    do_lower_case: true (the format it wrote before version 6, still honoured on load)."""
    from transformers import AutoModel, AutoTokenizer

    from hf_robust_ir.modeling.bi_encoder import CONFIG_NAME

    def lowercasing_folder(base, folder):
        BiEncoder.from_pretrained(base).save_pretrained(folder)
        (folder / CONFIG_NAME).unlink()  # a plain sentence-transformers folder
        settings = json.loads((folder / "sentence_bert_config.json").read_text())
        (folder / "sentence_bert_config.json").write_text(json.dumps({**settings, "do_lower_case": True}))
        return folder

    texts = ["Label Noise in IR", "hello World"]
    uncased = lowercasing_folder(tiny_model_path, tmp_path / "uncased")
    np.testing.assert_allclose(  # the tiny tokenizer lowercases by itself: the same vectors
        BiEncoder.from_pretrained(uncased).encode_documents(texts),
        SentenceTransformer(str(uncased), device="cpu").encode(texts),
        atol=1e-5,
    )
    cased_base = tmp_path / "cased-base"
    AutoModel.from_pretrained(tiny_model_path).save_pretrained(cased_base)
    AutoTokenizer.from_pretrained(tiny_model_path, do_lower_case=False).save_pretrained(cased_base)
    cased = lowercasing_folder(cased_base, tmp_path / "cased")
    lowered = SentenceTransformer(str(cased), device="cpu").encode([t.lower() for t in texts])
    np.testing.assert_allclose(SentenceTransformer(str(cased), device="cpu").encode(texts), lowered, atol=1e-6)
    with pytest.raises(ValueError, match=r"cased: do_lower_case=true .* tokenizer that keeps case is not supported"):
        BiEncoder.from_pretrained(cased)


def test_card_usage_snippets_of_separate_towers_load_each_tower(tiny_model_path, tmp_path, monkeypatch):
    """With separate towers the repository root holds no modules.json: the snippets load query_encoder/ and
    document_encoder/ and give the model's own scores."""
    import huggingface_hub

    model = BiEncoder.from_pretrained(tiny_model_path, separate_towers=True, query_prefix="query: ")
    perturb_document_tower(model)  # the towers differ
    folder = tmp_path / "towers"
    model.save_pretrained(folder)
    assert not (folder / "modules.json").exists()
    text = hub.usage_snippets(hub.model_card_info_from_model(model, repo_id=str(folder)))
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, **kwargs: repo_id)  # the Hub, offline
    st_scope, hf_scope = {}, {}
    exec(blocks[0], st_scope)  # sentence-transformers
    exec(blocks[1], hf_scope)  # transformers
    queries, documents = model.encode_queries(["what is label noise?"]), model.encode_documents(["Label noise is ..."])
    assert np.abs(queries - model.encode_documents(["query: what is label noise?"])).max() > 1e-3
    for scope in (st_scope, hf_scope):
        np.testing.assert_allclose(np.asarray(scope["queries"]), queries, atol=1e-5)
        np.testing.assert_allclose(np.asarray(scope["documents"]), documents, atol=1e-5)
        np.testing.assert_allclose(np.asarray(scope["scores"]), queries @ documents.T, atol=1e-4)


def test_folders_scored_by_cosine_without_a_normalize_module_load_normalized(tiny_model_path, tmp_path):
    """sentence-transformers scores by cosine unless the folder says otherwise (older models such as paraphrase-*
    have no Normalize module): the BiEncoder normalizes, so its q·d is sentence-transformers' similarity."""
    texts, queries = ["label noise in retrieval", "hello world"], ["what is label noise?"]
    cosine = _save_sentence_transformer(tmp_path / "cosine", tiny_model_path)
    st = SentenceTransformer(str(cosine), device="cpu")
    assert st.similarity_fn_name == "cosine"
    model = BiEncoder.from_pretrained(cosine)
    assert model.retrieval_config.normalize is True
    np.testing.assert_allclose(
        model.encode_queries(queries) @ model.encode_documents(texts).T,
        np.asarray(st.similarity(st.encode(queries), st.encode(texts))),
        atol=1e-5,
    )
    dot = _save_sentence_transformer(tmp_path / "dot", tiny_model_path)
    settings = json.loads((dot / "config_sentence_transformers.json").read_text())
    (dot / "config_sentence_transformers.json").write_text(json.dumps({**settings, "similarity_fn_name": "dot"}))
    model = BiEncoder.from_pretrained(dot)
    assert model.retrieval_config.normalize is False  # dot product of raw embeddings, as sentence-transformers
    np.testing.assert_allclose(
        model.encode_documents(texts), SentenceTransformer(str(dot), device="cpu").encode(texts), atol=1e-5
    )
    (dot / "config_sentence_transformers.json").unlink()  # saved before similarity_fn_name existed: cosine
    assert BiEncoder.from_pretrained(dot).retrieval_config.normalize is True


def _folder_without_max_seq_length(tiny_model_path, tmp_path):
    """A sentence-transformers folder of a 512-position tiny BERT read to 400 tokens, saved without max_seq_length
    (sentence-transformers 6 keeps it in the tokenizer)."""
    from conftest import tiny_bert_config
    from transformers import AutoTokenizer, BertModel

    base = tmp_path / "base"
    BertModel(tiny_bert_config(max_position_embeddings=512)).save_pretrained(base)
    AutoTokenizer.from_pretrained(tiny_model_path).save_pretrained(base)
    folder = tmp_path / "st"
    transformer = models.Transformer(str(base), max_seq_length=400)
    SentenceTransformer(modules=[transformer, models.Pooling(32, "mean")], device="cpu").save(str(folder))
    return folder


def test_a_folder_without_max_seq_length_reads_as_far_as_sentence_transformers(tiny_model_path, tmp_path):
    """sentence-transformers 6 saves max_seq_length in the tokenizer, not in sentence_bert_config.json: a BiEncoder
    reads as many tokens as it does (not its own default of 256)."""
    folder = _folder_without_max_seq_length(tiny_model_path, tmp_path)
    assert "max_seq_length" not in json.loads((folder / "sentence_bert_config.json").read_text())
    model = BiEncoder.from_pretrained(folder)
    assert (model.retrieval_config.query_max_length, model.retrieval_config.document_max_length) == (400, 400)
    long_text = " ".join(["label noise"] * 170)  # 340 tokens: past 256, within 400
    np.testing.assert_allclose(
        model.encode_documents([long_text]),
        SentenceTransformer(str(folder), device="cpu").encode([long_text], normalize_embeddings=True),  # cosine
        atol=1e-5,
    )
    assert BiEncoder.from_pretrained(folder, document_max_length=64).retrieval_config.document_max_length == 64


def test_a_max_length_given_for_one_kind_leaves_the_other_as_sentence_transformers_reads(tiny_model_path, tmp_path):
    """Overriding the query length of a folder without max_seq_length keeps documents at the folder's length (400),
    not at a BiEncoder's own default of 256."""
    folder = _folder_without_max_seq_length(tiny_model_path, tmp_path)
    model = BiEncoder.from_pretrained(folder, query_max_length=32)
    assert (model.retrieval_config.query_max_length, model.retrieval_config.document_max_length) == (32, 400)
    long_text = " ".join(["label noise"] * 170)  # 340 tokens: past 256, within 400
    np.testing.assert_allclose(
        model.encode_documents([long_text]),
        SentenceTransformer(str(folder), device="cpu").encode([long_text], normalize_embeddings=True),
        atol=1e-5,
    )
    model = BiEncoder.from_pretrained(folder, document_max_length=64)
    assert (model.retrieval_config.query_max_length, model.retrieval_config.document_max_length) == (400, 64)


def test_a_max_length_asked_for_past_a_folders_max_seq_length_is_kept(tiny_model_path, tmp_path):
    """sentence-transformers 6 keeps max_seq_length (400) as the tokenizer's model_max_length: a setting, not what the
    model reads (512 positions), so a longer max length asked for is kept, as ``st.max_seq_length = 480`` is."""
    folder = _folder_without_max_seq_length(tiny_model_path, tmp_path)
    model = BiEncoder.from_pretrained(folder, document_max_length=480)
    assert model.retrieval_config.document_max_length == 480
    long_text = " ".join(["label noise"] * 230)  # 460 tokens with [CLS] and [SEP]: past 400, within 480
    st = SentenceTransformer(str(folder), device="cpu")
    st.max_seq_length = 480
    expected = st.encode_document([long_text], normalize_embeddings=True)
    np.testing.assert_allclose(model.encode_documents([long_text]), expected, atol=1e-5)
    np.testing.assert_allclose(
        BiEncoder.from_pretrained(folder).encode_documents([long_text], max_length=480), expected, atol=1e-5
    )
    assert BiEncoder.from_pretrained(folder, document_max_length=1000).retrieval_config.document_max_length == 512


def test_positions_after_the_padding_index_bound_the_max_length(tiny_model_path, tmp_path):
    """RoBERTa-style embeddings number positions from padding_idx + 1: 130 positions with padding_idx 1 read at most
    130 - 2 = 128 tokens, whatever the tokenizer's limit (512 here)."""
    from conftest import tiny_bert_config
    from transformers import AutoTokenizer, RobertaConfig, RobertaModel

    settings = tiny_bert_config(max_position_embeddings=130).to_dict()
    settings.pop("model_type", None)
    RobertaModel(RobertaConfig(**{**settings, "pad_token_id": 1}), add_pooling_layer=False).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(tiny_model_path).save_pretrained(tmp_path)
    model = BiEncoder.from_pretrained(tmp_path, document_max_length=1000)
    assert model.retrieval_config.document_max_length == 128
    assert model.encode_documents([" ".join(["noise"] * 300)]).shape == (1, 32)
    with pytest.raises(ValueError, match="document max_length 129 exceeds the 128 tokens this model reads"):
        model.encode_documents(["noise"], max_length=129)
