"""CrossEncoder: logits against the plain transformers model, batching, ranking, grouping, save/load and ST parity."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import transformers
from conftest import tiny_bert_config
from sentence_transformers import CrossEncoder as SentenceTransformersCrossEncoder
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertForSequenceClassification

from hf_robust_ir.modeling import CrossEncoder, CrossEncoderConfig

QUERY = "what is label noise"
DOCUMENTS = [
    "label noise means that some training labels are wrong",
    "bm25",
    "dense retrievers are trained with contrastive losses over in-batch and mined hard negatives, "
    "which are sometimes relevant passages that were never annotated",
    "a false negative is a relevant passage labeled as negative",
    "cats",
]
PAIRS = [(QUERY, d) for d in DOCUMENTS] + [("hard negatives", DOCUMENTS[2]), ("q", "a much longer document " * 8)]


def _tiny_config(num_labels: int):
    # a wide initialization spreads the random model's scores, so rankings are not decided by rounding
    return tiny_bert_config(num_labels=num_labels, initializer_range=0.2)


@pytest.fixture(scope="module")
def reranker_path(tiny_model_path, tmp_path_factory) -> str:
    """A tiny random BertForSequenceClassification(num_labels=1), saved as plain transformers with the tokenizer."""
    path = tmp_path_factory.mktemp("tiny-reranker")
    torch.manual_seed(0)
    BertForSequenceClassification(_tiny_config(num_labels=1)).save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_model_path).save_pretrained(path)
    return str(path)


def _reference_logits(folder: str, pairs: list[tuple[str, str]]) -> np.ndarray:
    """Logits of the plain transformers model, one pair at a time (no padding)."""
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    out = []
    for query, document in pairs:
        batch = tokenizer(query, document, truncation=True, max_length=128, return_tensors="pt")
        with torch.no_grad():
            out.append(model(**batch).logits[0, 0].item())
    return np.array(out, dtype=np.float32)


@pytest.fixture(scope="module")
def reference_scores(reranker_path) -> np.ndarray:
    return _reference_logits(reranker_path, PAIRS)


def test_forward_returns_one_logit_per_pair(reranker_path, reference_scores):
    model = CrossEncoder.from_pretrained(reranker_path).eval()
    features = model.tokenize([q for q, _ in PAIRS], [d for _, d in PAIRS])
    # pairs are encoded as one sequence: [CLS] query [SEP] document [SEP]
    direct = model.tokenizer(PAIRS[0][0], PAIRS[0][1])
    assert features["input_ids"][0, : len(direct["input_ids"])].tolist() == direct["input_ids"]
    assert features["token_type_ids"][0].max() == 1
    with torch.no_grad():
        scores = model(**features, labels=torch.zeros(len(PAIRS)))  # labels are ignored: no loss inside
    assert scores.shape == (len(PAIRS),)
    np.testing.assert_allclose(scores.numpy(), reference_scores, atol=1e-5)
    assert reference_scores.std() > 0.1


def test_predict_keeps_order_across_length_sorted_batches(reranker_path, reference_scores):
    model = CrossEncoder.from_pretrained(reranker_path)
    lengths = [len(model.tokenizer(q, d)["input_ids"]) for q, d in PAIRS]
    assert lengths != sorted(lengths, reverse=True)  # so the length sort really reorders
    scores = model.predict(PAIRS, batch_size=3)
    assert scores.dtype == np.float32 and scores.shape == (len(PAIRS),)
    np.testing.assert_allclose(scores, reference_scores, atol=1e-5)
    one_by_one = np.concatenate([model.predict([pair]) for pair in PAIRS])
    np.testing.assert_allclose(scores, one_by_one, atol=1e-5)
    assert model.predict([]).shape == (0,)


def test_predict_bf16_close_to_fp32(reranker_path, reference_scores):
    model = CrossEncoder.from_pretrained(reranker_path)
    bf16 = model.predict(PAIRS, bf16=True)
    assert bf16.dtype == np.float32
    np.testing.assert_allclose(bf16, reference_scores, atol=0.03)


def test_rank(reranker_path, reference_scores):
    model = CrossEncoder.from_pretrained(reranker_path)
    expected = reference_scores[: len(DOCUMENTS)]
    ranked = model.rank(QUERY, DOCUMENTS)
    assert [hit["corpus_id"] for hit in ranked] == list(np.argsort(-expected))
    np.testing.assert_allclose([hit["score"] for hit in ranked], np.sort(expected)[::-1], atol=1e-5)
    top = model.rank(QUERY, DOCUMENTS, top_k=2, return_documents=True)
    assert [hit["corpus_id"] for hit in top] == [hit["corpus_id"] for hit in ranked[:2]]
    assert [hit["text"] for hit in top] == [DOCUMENTS[hit["corpus_id"]] for hit in top]


def test_group_scores_reshape_and_temperature(reranker_path):
    model = CrossEncoder.from_pretrained(reranker_path, temperature=0.5)
    assert model.temperature == 0.5
    grouped = model.group_scores(torch.arange(6.0), group_size=3)
    assert torch.equal(grouped, torch.tensor([[0.0, 2.0, 4.0], [6.0, 8.0, 10.0]]))
    with pytest.raises(ValueError, match="groups of 4"):
        model.group_scores(torch.arange(6.0), group_size=4)


def test_gradients_reach_encoder_and_head(reranker_path):
    model = CrossEncoder.from_pretrained(reranker_path).train()
    features = model.tokenize([QUERY, QUERY], DOCUMENTS[:2])
    loss = torch.nn.functional.cross_entropy(model.group_scores(model(**features), 2), torch.tensor([0]))
    loss.backward()
    assert model.model.classifier.weight.grad.abs().max() > 0
    assert model.model.bert.embeddings.word_embeddings.weight.grad.abs().max() > 0


def test_save_and_load_round_trip(reranker_path, reference_scores, tmp_path):
    model = CrossEncoder.from_pretrained(reranker_path, max_length=16, temperature=0.25)
    assert model.max_length == 16
    long_pair = [(QUERY, DOCUMENTS[2])]
    truncated = model.predict(long_pair)
    assert np.abs(truncated - reference_scores[2]).max() > 1e-3  # truncation at 16 tokens changed the score
    np.testing.assert_allclose(model.predict(PAIRS[:2]), reference_scores[:2], atol=1e-5)  # short pairs fit in 16

    model.save_pretrained(tmp_path)
    files = {p.name for p in tmp_path.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "hf_robust_ir_config.json"} <= files
    assert "pytorch_model.bin" not in files
    assert json.loads((tmp_path / "hf_robust_ir_config.json").read_text()) == {"max_length": 16, "temperature": 0.25}

    reloaded = CrossEncoder.from_pretrained(tmp_path)
    assert reloaded.retrieval_config == CrossEncoderConfig(max_length=16, temperature=0.25)
    np.testing.assert_allclose(reloaded.predict(PAIRS), model.predict(PAIRS), atol=1e-6)
    np.testing.assert_allclose(reloaded.predict(long_pair), truncated, atol=1e-6)
    assert CrossEncoder.from_pretrained(tmp_path, max_length=64).max_length == 64

    hf_model = AutoModelForSequenceClassification.from_pretrained(str(tmp_path)).eval()
    assert hf_model.config.num_labels == 1
    np.testing.assert_allclose(_reference_logits(str(tmp_path), PAIRS[:2]), reference_scores[:2], atol=1e-5)


def test_sentence_transformers_cross_encoder_parity(reranker_path, reference_scores, tmp_path):
    model = CrossEncoder.from_pretrained(reranker_path, max_length=16)
    ours = model.predict(PAIRS)

    # a plain one-label folder: sentence-transformers applies its default sigmoid to the same logits
    plain = SentenceTransformersCrossEncoder(reranker_path, device="cpu")
    assert isinstance(plain.activation_fn, torch.nn.Sigmoid)
    np.testing.assert_allclose(plain.predict(PAIRS), 1 / (1 + np.exp(-reference_scores)), atol=1e-6)

    # a saved folder: raw logits and the same truncation, so the same scores and the same ranking
    model.save_pretrained(tmp_path)
    loaded = SentenceTransformersCrossEncoder(str(tmp_path), device="cpu")
    assert isinstance(loaded.activation_fn, torch.nn.Identity)
    np.testing.assert_allclose(loaded.predict(PAIRS, batch_size=3), ours, atol=1e-5)
    ours_ranked = [hit["corpus_id"] for hit in model.rank(QUERY, DOCUMENTS)]
    assert [hit["corpus_id"] for hit in loaded.rank(QUERY, DOCUMENTS)] == ours_ranked


def test_new_head_on_an_encoder_folder(tiny_model_path):
    model = CrossEncoder.from_pretrained(tiny_model_path)
    assert model.model.config.num_labels == 1
    assert model.max_length == 128  # capped at the tiny model's position embeddings
    encoder = transformers.AutoModel.from_pretrained(tiny_model_path)
    assert torch.equal(
        model.model.bert.embeddings.word_embeddings.weight, encoder.embeddings.word_embeddings.weight
    )  # the encoder weights were loaded, only the head is new
    scores = model.predict(PAIRS[:3])
    assert scores.shape == (3,) and np.isfinite(scores).all()


def test_errors(reranker_path, tmp_path):
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        CrossEncoder.from_pretrained(tmp_path / "no-such-model")
    with pytest.raises(TypeError, match="temprature"):
        CrossEncoder.from_pretrained(reranker_path, temprature=0.1)
    with pytest.raises(ValueError, match="temperature"):
        CrossEncoderConfig(temperature=0.0)
    two_labels = tmp_path / "two-labels"
    BertForSequenceClassification(_tiny_config(num_labels=2)).save_pretrained(two_labels)
    with pytest.raises(ValueError, match="2-label"):
        CrossEncoder.from_pretrained(two_labels)
    model = CrossEncoder.from_pretrained(reranker_path)
    with pytest.raises(ValueError, match="2 queries but 1 documents"):
        model.tokenize(["a", "b"], ["c"])
    with pytest.raises(ValueError, match="pairs"):
        model.predict([("only a query",)])


def test_a_pair_given_as_a_string_is_refused(reranker_path, reference_scores):
    """A str is a sequence of characters: ("qa", "ds") would be scored as the pairs ("q", "a") and ("d", "s")."""
    model = CrossEncoder.from_pretrained(reranker_path)
    for pairs in (("qa", "ds"), ["qa"], PAIRS[0]):
        with pytest.raises(ValueError, match=r"\(query, document\) pairs, got a str: wrap one pair in a list"):
            model.predict(pairs)
    with pytest.raises(ValueError, match="a list of documents, got a str: wrap one document in a list"):
        model.rank(QUERY, DOCUMENTS[0])
    np.testing.assert_allclose(model.predict([PAIRS[0]]), reference_scores[:1], atol=1e-5)
    np.testing.assert_allclose(model.predict(p for p in PAIRS[:2]), reference_scores[:2], atol=1e-5)


def test_saving_over_a_sentence_transformers_folder_keeps_raw_logits(reranker_path, reference_scores, tmp_path):
    """sentence-transformers 6 reads the activation from config_sentence_transformers.json before config.json: a
    stale Sigmoid there (the folder was saved by sentence-transformers) must not survive a save into it."""
    SentenceTransformersCrossEncoder(reranker_path, device="cpu").save_pretrained(str(tmp_path))
    assert "Sigmoid" in (tmp_path / "config_sentence_transformers.json").read_text()
    model = CrossEncoder.from_pretrained(tmp_path)
    model.save_pretrained(tmp_path)
    loaded = SentenceTransformersCrossEncoder(str(tmp_path), device="cpu")
    assert isinstance(loaded.activation_fn, torch.nn.Identity)
    np.testing.assert_allclose(loaded.predict(PAIRS[:3]), reference_scores[:3], atol=1e-5)


@pytest.mark.parametrize("batch_size", [0, -1])
def test_a_batch_size_below_one_is_refused(reranker_path, batch_size):
    """range(0, n, -1) is empty: the scores would be the uninitialized output buffer."""
    model = CrossEncoder.from_pretrained(reranker_path)
    with pytest.raises(ValueError, match=f"batch_size must be >= 1, got {batch_size}"):
        model.predict(PAIRS[:2], batch_size=batch_size)
    with pytest.raises(ValueError, match=f"batch_size must be >= 1, got {batch_size}"):
        model.rank(QUERY, DOCUMENTS, batch_size=batch_size)


def test_positions_after_the_padding_index_bound_a_rerankers_max_length(tiny_model_path, tmp_path):
    """RoBERTa-style embeddings number positions from padding_idx + 1: 130 positions with padding_idx 1 read at most
    128 tokens. An explicit max_length of 1000 was capped at 130, and a 130-token pair failed inside the model."""
    from conftest import tiny_bert_config
    from transformers import RobertaConfig, RobertaForSequenceClassification

    settings = tiny_bert_config(max_position_embeddings=130, num_labels=1).to_dict()
    settings.pop("model_type", None)
    RobertaForSequenceClassification(RobertaConfig(**{**settings, "pad_token_id": 1})).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(tiny_model_path).save_pretrained(tmp_path)
    model = CrossEncoder.from_pretrained(tmp_path, max_length=1000)
    assert model.max_length == 128
    scores = model.predict([("noise " * 40, "label " * 200)])
    assert scores.shape == (1,) and np.isfinite(scores).all()


# ---------------------------------------------------------------------------------------------- LoRA (peft)
def _lora_config():
    from peft import LoraConfig

    return LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"], lora_dropout=0.0)


@pytest.fixture(scope="module")
def lora_reranker(tiny_model_path, tmp_path_factory):
    """A reranker started on an encoder folder (a new head) with a LoRA adapter, trained a few steps, then saved."""
    torch.manual_seed(0)
    model = CrossEncoder.from_pretrained(tiny_model_path, max_length=64).add_lora(_lora_config())
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-2)
    batch = model.tokenize([p[0] for p in PAIRS[:6]], [p[1] for p in PAIRS[:6]])
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(model.group_scores(model(**batch), 3), torch.zeros(2, dtype=int))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    folder = tmp_path_factory.mktemp("lora-reranker")
    model.save_pretrained(folder)
    return model, folder


def test_lora_trains_the_adapter_and_the_new_head(lora_reranker):
    """A head new on an encoder is random: it trains with the adapter and is saved with it, else the adapter would
    reload onto another random head."""
    model, _ = lora_reranker
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name or ".modules_to_save." in name for name in trainable)
    assert {name for name in trainable if "classifier" in name}


def test_a_lora_reranker_folder_loads_back_with_the_same_scores(lora_reranker):
    model, folder = lora_reranker
    files = {p.name for p in folder.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "hf_robust_ir_config.json", "tokenizer.json"} <= files
    assert not files & {"model.safetensors", "config.json"}
    expected = model.predict(PAIRS)

    loaded = CrossEncoder.from_pretrained(folder)
    assert loaded.max_length == 64
    np.testing.assert_allclose(loaded.predict(PAIRS), expected, atol=1e-6)
    trainable = {name for name, p in loaded.named_parameters() if p.requires_grad}
    assert trainable == {name for name, p in model.named_parameters() if p.requires_grad}  # it trains on

    # transformers loads the adapter on its base, an encoder whose config would give a two-label head
    hf_model = AutoModelForSequenceClassification.from_pretrained(str(folder), num_labels=1).eval()
    batch = model.tokenize([p[0] for p in PAIRS], [p[1] for p in PAIRS])
    with torch.no_grad():
        np.testing.assert_allclose(hf_model(**batch).logits.squeeze(-1).numpy(), expected, atol=1e-5)


def test_a_merged_lora_reranker_saves_a_full_model_for_sentence_transformers(lora_reranker, tmp_path):
    model, folder = lora_reranker
    expected = model.predict(PAIRS)
    merged = CrossEncoder.from_pretrained(folder).merge_lora()
    assert not any("lora_" in name for name, _ in merged.named_parameters())
    merged.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists() and not (tmp_path / "adapter_config.json").exists()
    np.testing.assert_allclose(CrossEncoder.from_pretrained(tmp_path).predict(PAIRS), expected, atol=1e-5)
    loaded = SentenceTransformersCrossEncoder(str(tmp_path), device="cpu")
    np.testing.assert_allclose(loaded.predict(PAIRS), expected, atol=1e-5)


def test_lora_on_a_reranker_that_has_one_or_none(lora_reranker, reranker_path):
    _, folder = lora_reranker
    with pytest.raises(ValueError, match=r"already holds a LoRA adapter.*merge_lora\(\)"):
        CrossEncoder.from_pretrained(folder).add_lora(_lora_config())
    with pytest.raises(ValueError, match="merged in memory only"):
        CrossEncoder.from_pretrained(folder).merge_lora().add_lora(_lora_config())
    with pytest.raises(ValueError, match="no LoRA adapter to merge"):
        CrossEncoder.from_pretrained(reranker_path).merge_lora()


def test_a_lora_reranker_checkpoint_resumes_to_the_uninterrupted_weights(no_dropout_model_path, tmp_path):
    import datasets
    from conftest import canonical_row

    from hf_robust_ir.data.schema import ROW_FEATURES
    from hf_robust_ir.trainer import RetrievalTrainer, RetrievalTrainingArguments

    corpus = {f"d{i}": f"passage {i} about topic {i % 3}" for i in range(12)}
    rows = [canonical_row(f"q{i}", [f"d{i}", f"d{(i + 4) % 12}", f"d{(i + 8) % 12}"], [1, 0, 0]) for i in range(8)]
    dataset = datasets.Dataset.from_list(rows, features=ROW_FEATURES)

    def run(save_strategy, resume=None):
        torch.manual_seed(0)
        model = CrossEncoder.from_pretrained(no_dropout_model_path, max_length=32).add_lora(_lora_config())
        args = RetrievalTrainingArguments(
            output_dir=str(tmp_path), group_size=3, per_device_train_batch_size=4, learning_rate=1e-2, max_steps=6,
            save_strategy=save_strategy, save_steps=3, report_to=[], use_cpu=True, seed=3, disable_tqdm=True,
        )  # fmt: skip
        RetrievalTrainer(model, args, train_dataset=dataset, corpus=corpus).train(resume_from_checkpoint=resume)
        return model

    full = run("steps")
    assert (tmp_path / "checkpoint-3" / "adapter_config.json").exists()
    resumed = run("no", resume=str(tmp_path / "checkpoint-3"))
    trained = {name: p for name, p in full.named_parameters() if p.requires_grad}
    assert trained.keys() == {name for name, p in resumed.named_parameters() if p.requires_grad}
    for name, value in resumed.named_parameters():
        if name in trained:
            torch.testing.assert_close(value, trained[name], atol=1e-6, rtol=0, msg=name)
    np.testing.assert_allclose(resumed.predict(PAIRS), full.predict(PAIRS), atol=1e-6)
