"""A frozen guide adding lexical evidence to a dense model: ``g(q, d) = cos(q, d) + w · BM25(q, d) / Σ_{t∈q} idf(t)``.

Label weakening's guide (and GISTEmbed's) is usually the base model, which is also the model that mined the hard
negatives and, in mined or LLM-labeled data, often the model whose near-misses became wrong labels: it scores a wrong
positive and the true one alike by construction. BM25 makes different mistakes, so the sum tells a displaced true
positive from a near-miss label more often than the dense model alone (on SciFact with 40 % semantic-swap noise, the
guide prefers the true positive to the wrong label for 83 % of the swapped queries, the dense one for 75 %;
``benchmarks/NOISE_ROBUSTNESS.md``). Hybrid dense + BM25 scoring is the usual remedy for a dense retriever's blind spots
(e.g. Ma et al., *A Replication Study of Dense Passage Retriever*, 2021).

BM25 is written as a dot product of two hashed vectors so that the guide keeps the embedding interface the trainer
uses (``q·d`` over the batch, all-gathered across processes like dense embeddings):

    query:    u[h(t)] += idf(t) / Σ_{t'∈q} idf(t')              (each query token, repeated tokens counted)
    document: v[h(t)]  = tf(t, d) / (tf(t, d) + k1 · (1 − b + b · |d| / avgdl))

so ``u·v`` is Lucene's BM25 (the variant ``bm25s`` computes by default) divided by the largest BM25 the query could
reach, in [0, 1]. ``h`` gives each token of the ``queries`` the encoder is built with (the training queries) a column
of its own, so their scores are exact; any other token is hashed into ``hashed_dimensions`` shared buckets, where a
query token meets one of a passage's ~100 other tokens about 100 / hashed_dimensions of the time (a spurious match;
a bucket holds the largest term part of the passage's tokens in it, so the score stays in [0, 1]).
``idf(t) = ln(1 + (N − df + 0.5) / (df + 0.5))`` and ``avgdl`` come from the corpus. Tokenization (lower case,
English stop words, Snowball stemming) is ``bm25s``'s.
"""

from __future__ import annotations

import math
import zlib
from collections import Counter
from collections.abc import Iterable

import numpy as np
import torch

from .bi_encoder import check_text_list


def _bm25s():
    try:
        import bm25s
        import Stemmer
    except ImportError as error:  # an optional dependency: only the hybrid guide needs it
        raise ImportError("the lexical guide needs bm25s and PyStemmer: pip install 'hf_robust_ir[lexical]'") from error
    return bm25s, Stemmer


class LexicalEncoder:
    """BM25 over a corpus as hashed query and document vectors whose dot product is the normalized score.

    Args:
        corpus: the passages whose statistics (document frequencies, average length) BM25 uses; an iterable of texts
            or a mapping id -> text (the training corpus, as ``RetrievalTrainer`` gets it).
        queries: the texts the encoder will score (the training queries): each of their tokens gets a column of its
            own. ``None``: every token is hashed.
        k1, b: BM25's term-frequency saturation and length normalization.
        hashed_dimensions: the shared buckets of the tokens the ``queries`` do not hold.
        stopwords, language: ``bm25s.tokenize``'s stop words and the Snowball stemmer's language (``None``: no
            stemming).
    """

    def __init__(
        self,
        corpus: Iterable[str] | dict[str, str],
        queries: Iterable[str] | dict[str, str] | None = None,
        k1: float = 1.5,
        b: float = 0.75,
        hashed_dimensions: int = 2**12,
        stopwords: str | None = "en",
        language: str | None = "english",
        show_progress_bar: bool = False,
    ):
        if hashed_dimensions < 1:
            raise ValueError(f"hashed_dimensions must be >= 1, got {hashed_dimensions}")
        if k1 < 0 or not 0.0 <= b <= 1.0:
            raise ValueError(f"BM25 needs k1 >= 0 and 0 <= b <= 1, got k1={k1}, b={b}")
        bm25s, Stemmer = _bm25s()
        stemmer = Stemmer.Stemmer(language) if language else None  # built once: tokenize runs every training step
        self._tokenize_texts = lambda texts, progress=False: bm25s.tokenize(
            list(texts), stopwords=stopwords, stemmer=stemmer, return_ids=False, show_progress=progress
        )
        texts = list(corpus.values()) if isinstance(corpus, dict) else list(corpus)
        if not texts:
            raise ValueError("the lexical guide needs a non-empty corpus for its BM25 statistics")
        tokens = self._tokenize_texts(texts, show_progress_bar)
        document_frequency = Counter(t for document in tokens for t in set(document))
        self.documents = len(tokens)
        self.average_length = max(sum(len(document) for document in tokens) / len(tokens), 1e-9)
        self.document_frequency = dict(document_frequency)
        query_texts = list(queries.values()) if isinstance(queries, dict) else list(queries or ())
        vocabulary = sorted({t for tokens in self.tokenize(query_texts) for t in tokens})
        self.columns = {token: column for column, token in enumerate(vocabulary)}
        self.hashed_dimensions = int(hashed_dimensions)
        self.dimensions = len(self.columns) + self.hashed_dimensions
        self.k1, self.b = float(k1), float(b)
        self.settings = {
            "k1": k1,
            "b": b,
            "query_vocabulary": len(self.columns),
            "hashed_dimensions": hashed_dimensions,
            "stopwords": stopwords,
            "language": language,
        }

    def idf(self, token: str) -> float:
        df = self.document_frequency.get(token, 0)
        return math.log(1.0 + (self.documents - df + 0.5) / (df + 0.5))

    def bucket(self, token: str) -> int:
        """The token's own column, or a hashed bucket after them (crc32: stable across processes, as ``hash`` is
        not)."""
        column = self.columns.get(token)
        if column is not None:
            return column
        return len(self.columns) + zlib.crc32(token.encode("utf-8")) % self.hashed_dimensions

    def tokenize(self, texts: list[str]) -> list[list[str]]:
        check_text_list(texts)
        return self._tokenize_texts(texts) if texts else []

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        vectors = np.zeros((len(texts), self.dimensions), dtype=np.float32)
        for row, tokens in enumerate(self.tokenize(texts)):
            weights = [self.idf(t) for t in tokens]
            total = sum(weights)  # 0 for a query of stop words only: no lexical evidence, a zero vector
            for token, weight in zip(tokens, weights):
                vectors[row, self.bucket(token)] += weight / total if total > 0 else 0.0
        return vectors

    def encode_documents(self, texts: list[str]) -> np.ndarray:
        vectors = np.zeros((len(texts), self.dimensions), dtype=np.float32)
        for row, tokens in enumerate(self.tokenize(texts)):
            norm = self.k1 * (1.0 - self.b + self.b * len(tokens) / self.average_length)
            for token, tf in Counter(tokens).items():
                # max, not sum: tokens sharing a hashed bucket must not add up past what one token reaches (< 1),
                # which kept the score in [0, 1]; an exact column holds one token, so max is its value
                column = self.bucket(token)
                vectors[row, column] = max(vectors[row, column], tf / (tf + norm))
        return vectors


class HybridGuide(torch.nn.Module):
    """A frozen guide scoring ``q·d = cos(q, d) + lexical_weight · BM25(q, d) / Σ_{t∈q} idf(t)``: the dense
    ``model``'s embeddings concatenated with the :class:`LexicalEncoder`'s vectors scaled by ``lexical_weight``.

    Pass it as ``RetrievalTrainer(..., guide_model=HybridGuide(base, corpus))`` for label weakening with
    ``guide_margin`` / ``replace_margin`` or ``guide_masked``; its scores are in cosine units plus at most
    ``lexical_weight``, so a margin fires on more of the rows whose candidate BM25 also favours (on SciFact at weight
    0.6: label weakening's ``guide_margin`` 0.05 as with the dense guide, ``replace_margin`` 0.2 instead of 0.15).

    Args:
        model: the dense guide (a :class:`~hf_robust_ir.modeling.BiEncoder`, typically the base model).
        corpus: texts (or id -> text) for BM25's statistics, or a ready :class:`LexicalEncoder`.
        queries: the training queries (texts or id -> text), whose tokens get exact columns (see above).
        lexical_weight: ``w`` above; 0 leaves the dense guide's scores.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        corpus: Iterable[str] | dict[str, str] | LexicalEncoder,
        queries: Iterable[str] | dict[str, str] | None = None,
        lexical_weight: float = 0.6,
        **lexical_kwargs,
    ):
        super().__init__()
        if lexical_weight < 0:
            raise ValueError(f"lexical_weight must be >= 0, got {lexical_weight}")
        self.model = model
        if isinstance(corpus, LexicalEncoder):
            self.lexical = corpus
        else:
            self.lexical = LexicalEncoder(corpus, queries=queries, **lexical_kwargs)
        self.lexical_weight = float(lexical_weight)

    @property
    def device(self) -> torch.device:
        return self.model.device

    def config(self) -> dict:
        """What the model card records about the guide."""
        return {"guide": "hybrid", "lexical_weight": self.lexical_weight, "bm25": self.lexical.settings}

    def encode(self, texts: list[str], kind: str = "document", **kwargs) -> np.ndarray:
        if kind not in ("query", "document"):
            raise ValueError(f"kind must be 'query' or 'document', got {kind!r}")
        dense = self.model.encode(texts, kind, **kwargs).astype(np.float32, copy=False)
        if kind == "query":  # the weight on one side only: the product carries it once
            lexical = self.lexical_weight * self.lexical.encode_queries(texts)
        else:
            lexical = self.lexical.encode_documents(texts)
        return np.concatenate([dense, lexical], axis=1)

    def encode_queries(self, texts: list[str], **kwargs) -> np.ndarray:
        return self.encode(texts, "query", **kwargs)

    def encode_documents(self, texts: list[str], **kwargs) -> np.ndarray:
        return self.encode(texts, "document", **kwargs)
