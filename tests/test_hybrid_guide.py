"""The lexical encoder (BM25 as a dot product) and the hybrid dense + BM25 guide."""

import math

import numpy as np
import pytest
import torch
from conftest import TOPIC_CORPUS, topic_rows

from hf_robust_ir.losses import LabelWeakeningLoss
from hf_robust_ir.modeling import BiEncoder, HybridGuide, LexicalEncoder
from hf_robust_ir.trainer import RetrievalTrainer, RetrievalTrainingArguments

pytest.importorskip("bm25s")

CORPUS = ["cat dog cat", "dog bird", "fish"]


def test_normalized_bm25_worked_by_hand():
    # N = 3, avgdl = (3 + 2 + 1) / 3 = 2; df: cat 1, dog 2; k1 1.5, b 0.75
    idf_cat, idf_dog = math.log(1 + 2.5 / 1.5), math.log(1 + 1.5 / 2.5)
    norm_d0 = 1.5 * (0.25 + 0.75 * 3 / 2)  # |d0| = 3
    norm_d1 = 1.5 * (0.25 + 0.75 * 2 / 2)
    bm25_d0 = idf_cat * 2 / (2 + norm_d0) + idf_dog * 1 / (1 + norm_d0)
    bm25_d1 = idf_dog * 1 / (1 + norm_d1)
    expected = np.array([[bm25_d0, bm25_d1, 0.0]]) / (idf_cat + idf_dog)
    lexical = LexicalEncoder(CORPUS, queries=["The cat and the dog"])  # stop words leave "cat dog"
    scores = lexical.encode_queries(["The cat and the dog"]) @ lexical.encode_documents(CORPUS).T
    np.testing.assert_allclose(scores, expected, rtol=1e-6)
    assert lexical.idf("cat") == pytest.approx(idf_cat)


def test_scores_are_bm25s_scores_over_the_largest_attainable():
    import bm25s
    import Stemmer

    rng = np.random.default_rng(0)
    words = ["protein", "cells", "cancer", "mutation", "binding", "gene", "tumour", "receptor", "signal", "growth"]
    corpus = [" ".join(rng.choice(words, size=rng.integers(3, 12))) for _ in range(30)]
    queries = [" ".join(rng.choice(words, size=3, replace=False)) for _ in range(8)]
    lexical = LexicalEncoder(corpus, queries=queries)
    ours = lexical.encode_queries(queries) @ lexical.encode_documents(corpus).T
    stemmer = Stemmer.Stemmer("english")
    retriever = bm25s.BM25()  # Lucene's BM25, k1 1.5, b 0.75
    retriever.index(bm25s.tokenize(corpus, stopwords="en", stemmer=stemmer, show_progress=False), show_progress=False)
    for row, query in enumerate(queries):
        tokens = bm25s.tokenize([query], stopwords="en", stemmer=stemmer, return_ids=False, show_progress=False)[0]
        reference = retriever.get_scores(tokens) / sum(lexical.idf(t) for t in tokens)
        np.testing.assert_allclose(ours[row], reference, rtol=1e-5, atol=1e-6)
    assert ours.max() <= 1.0


def test_tokens_outside_the_queries_are_hashed():
    # without the queries every token is hashed: with room to spare the score is the exact one
    exact = LexicalEncoder(CORPUS, queries=["cat dog"])
    hashed = LexicalEncoder(CORPUS, hashed_dimensions=2**20)
    np.testing.assert_allclose(
        hashed.encode_queries(["cat dog"]) @ hashed.encode_documents(CORPUS).T,
        exact.encode_queries(["cat dog"]) @ exact.encode_documents(CORPUS).T,
        rtol=1e-6,
    )
    # one bucket: every token collides, so "bird" meets "fish": its weight 1 times fish's tf part 1 / (1 + 1.5 * (0.25
    # + 0.75 / 2)) -- the spurious matches the exact query columns avoid
    crowded = LexicalEncoder(CORPUS, hashed_dimensions=1)
    score = crowded.encode_queries(["bird"]) @ crowded.encode_documents(["fish"]).T
    assert score[0, 0] == pytest.approx(1 / (1 + 1.5 * (0.25 + 0.75 / 2)))
    assert exact.dimensions == 2 + 2**12 and hashed.dimensions == 2**20
    # tokens sharing a bucket do not add up: "cat dog" (d0's tokens, both in the one bucket) is worth what its larger
    # part is, cat's 2 / (2 + norm) = 0.49 (a sum gives 0.82), so the score stays under 1 (a sum gives 1.68 for the
    # 40 distinct tokens below)
    norm_d0 = 1.5 * (0.25 + 0.75 * 3 / 2)
    score = crowded.encode_queries(["fish"]) @ crowded.encode_documents(["cat dog cat"]).T
    assert score[0, 0] == pytest.approx(2 / (2 + norm_d0))
    many = " ".join(f"word{i}" for i in range(40))
    assert (crowded.encode_queries(["fish"]) @ crowded.encode_documents([many]).T).max() < 1.0


def test_a_query_of_stop_words_has_no_lexical_evidence_and_bad_settings_are_refused():
    lexical = LexicalEncoder(CORPUS)
    assert not lexical.encode_queries(["the and of"]).any()
    assert lexical.encode_queries([]).shape == (0, lexical.dimensions)
    with pytest.raises(ValueError, match="non-empty corpus"):
        LexicalEncoder([])
    with pytest.raises(ValueError, match="hashed_dimensions"):
        LexicalEncoder(CORPUS, hashed_dimensions=0)
    with pytest.raises(ValueError, match="k1"):
        LexicalEncoder(CORPUS, b=2.0)


def test_one_text_given_as_a_string_is_refused(no_dropout_model_path):
    """A str is a sequence of characters: "fish" would be scored as four one-letter documents."""
    lexical = LexicalEncoder(CORPUS)
    guide = HybridGuide(BiEncoder.from_pretrained(no_dropout_model_path), lexical)
    for call in (
        lambda: lexical.encode_documents("fish"),
        lambda: lexical.encode_queries("fish"),
        lambda: guide.encode_queries("fish"),
        lambda: guide.encode_documents("fish"),
    ):
        with pytest.raises(TypeError, match="expected a list of texts, got a str: wrap one text in a list"):
            call()
    assert (lexical.encode_queries(["fish"]) @ lexical.encode_documents(["fish"]).T)[0, 0] == pytest.approx(
        1 / (1 + 1.5 * (0.25 + 0.75 / 2))  # |d| = 1, avgdl = 2
    )


def test_hybrid_guide_scores_are_the_dense_cosine_plus_the_weighted_lexical_score(no_dropout_model_path):
    model = BiEncoder.from_pretrained(no_dropout_model_path)
    guide = HybridGuide(model, CORPUS, queries=["cat dog"], lexical_weight=0.5)
    queries, documents = guide.encode_queries(["cat dog"]), guide.encode_documents(CORPUS, batch_size=2)
    dense = model.encode_queries(["cat dog"]) @ model.encode_documents(CORPUS).T
    lexical = guide.lexical.encode_queries(["cat dog"]) @ guide.lexical.encode_documents(CORPUS).T
    np.testing.assert_allclose(queries @ documents.T, dense + 0.5 * lexical, rtol=1e-5, atol=1e-6)
    assert guide.device == model.device
    assert guide.config()["lexical_weight"] == 0.5
    with pytest.raises(ValueError, match="lexical_weight"):
        HybridGuide(model, CORPUS, lexical_weight=-1.0)


class _RecordingWeakening(LabelWeakeningLoss):
    def forward(self, scores, labels, mask, teacher=None, guide_scores=None):
        self.seen = (scores.detach().clone(), guide_scores.clone())
        return super().forward(scores, labels, mask, teacher, guide_scores)


class _CapturingTrainer(RetrievalTrainer):
    def guide_embeddings(self, inputs, device):
        self.texts = (list(inputs["query_texts"]), list(inputs["document_texts"]))
        return super().guide_embeddings(inputs, device)


def test_label_weakening_trains_with_the_hybrid_guide(tmp_path, no_dropout_model_path):
    args = RetrievalTrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=1, learning_rate=0.0, save_strategy="no",
        report_to=[], group_size=3, use_cpu=True, disable_tqdm=True, logging_steps=1,
    )  # fmt: skip
    rows = topic_rows()
    guide = HybridGuide(BiEncoder.from_pretrained(no_dropout_model_path), TOPIC_CORPUS, queries=list(rows["query"]))
    model = BiEncoder.from_pretrained(no_dropout_model_path)
    loss = _RecordingWeakening(margin=0.0, guide_margin=0.1, replace_margin=0.2)
    trainer = _CapturingTrainer(model, args, train_dataset=rows, corpus=TOPIC_CORPUS, loss=loss, guide_model=guide)
    assert all(not p.requires_grad for p in guide.parameters()) and guide.training is False
    trainer.train()
    scores, guide_scores = loss.seen
    queries, documents = trainer.texts
    lexical = guide.lexical.encode_queries(queries) @ guide.lexical.encode_documents(documents).T
    # same weights, no dropout, lr 0: the dense part is the model's score times τ; the rest is 0.6 × BM25
    expected = scores * model.retrieval_config.temperature + 0.6 * torch.from_numpy(lexical)
    torch.testing.assert_close(guide_scores, expected, atol=1e-4, rtol=1e-4)
    assert lexical.max() > 0  # the batch's queries share words with its documents ("topic", numbers)


def test_the_training_arguments_build_the_hybrid_guide(tmp_path, no_dropout_model_path):
    def arguments(**extra):
        return RetrievalTrainingArguments(
            output_dir=str(tmp_path), use_cpu=True, report_to=[], loss="label_weakening", **extra
        )

    weakening = {"margin": 0.0, "guide_margin": 0.1}
    args = arguments(loss_kwargs=weakening, guide_model=no_dropout_model_path, guide_lexical_weight=0.3)
    model = BiEncoder.from_pretrained(no_dropout_model_path)
    trainer = RetrievalTrainer(model, args, train_dataset=topic_rows(), corpus=TOPIC_CORPUS)
    guide = trainer.guide_model
    assert isinstance(guide, HybridGuide) and guide.lexical_weight == 0.3
    # the rows' query tokens (bm25s keeps words of two characters or more: not the digits)
    assert set(guide.lexical.columns) == {"topic", "question"}
    with pytest.raises(ValueError, match="reads no guide"):
        RetrievalTrainer(model, arguments(guide_lexical_weight=0.3), train_dataset=topic_rows(), corpus=TOPIC_CORPUS)
    with pytest.raises(ValueError, match="already a HybridGuide"):
        RetrievalTrainer(model, args, train_dataset=topic_rows(), corpus=TOPIC_CORPUS, guide_model=guide)
