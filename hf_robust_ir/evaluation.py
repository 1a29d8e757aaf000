"""Dense retrieval evaluation: encode the corpus, search a faiss inner-product index, score the run with pytrec_eval.

The chain is the one MTEB and BEIR use for zero-shot retrieval, so the numbers are comparable to theirs:

- documents are the corpus texts (``title + " " + text``, see :func:`hf_robust_ir.data.schema.document_text`);
- the similarity is the inner product of the model's embeddings (cosine when the model normalizes them);
- a retrieved document whose id equals the query id is dropped, as in MTEB's and BEIR's exact search;
- metrics come from ``pytrec_eval`` (trec_eval): nDCG@10, Recall@100, MRR@10 and MAP over the top ``top_k`` documents.

Any object with ``encode_queries(texts, batch_size=, bf16=, show_progress_bar=)`` and ``encode_documents(...)``
returning ``float32`` arrays of shape ``(n, d)`` can be evaluated; :class:`hf_robust_ir.modeling.BiEncoder` is one.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import faiss
import numpy as np
import pytrec_eval
import torch.distributed as dist
from tqdm.auto import tqdm

from hf_robust_ir.data.schema import DataFormatError, RetrievalCorpus

logger = logging.getLogger(__name__)

METRIC_KEYS = ("ndcg@10", "recall@100", "mrr@10", "map")
METRIC_MODULE_PATH = str(Path(__file__).resolve().parent / "metrics" / "retrieval_metrics")
"""Folder of the ``evaluate`` module: ``evaluate.load(METRIC_MODULE_PATH)`` works offline."""

Run = dict[str, dict[str, float]]
Qrels = Mapping[str, Mapping[str, int]]


class Encoder(Protocol):
    """What evaluation and mining need from a model."""

    def encode_queries(
        self, texts: list[str], batch_size: int = 32, bf16: bool = False, show_progress_bar: bool = False
    ) -> np.ndarray: ...

    def encode_documents(
        self, texts: list[str], batch_size: int = 32, bf16: bool = False, show_progress_bar: bool = False
    ) -> np.ndarray: ...


# --------------------------------------------------------------------------------------------------------------------
# faiss


def as_faiss_array(embeddings: np.ndarray) -> np.ndarray:
    """A C-contiguous ``float32`` matrix, the only layout faiss accepts."""
    array = np.ascontiguousarray(np.asarray(embeddings, dtype=np.float32))
    if array.ndim != 2:
        raise ValueError(f"embeddings must be a 2-d (n, dim) matrix, got shape {array.shape}")
    return array


def build_index(dim: int, index_factory: str = "Flat") -> faiss.Index:
    """An empty inner-product faiss index from an index-factory string.

    ``"Flat"`` is exact search. For corpora of millions, ``"IVF4096,Flat"`` (inverted lists; needs training, see
    :func:`train_index`), ``"HNSW32"`` (graph, no training) or ``"IVF4096,PQ64"`` (compressed) trade exactness for
    speed and memory. Search-time knobs (``nprobe``, ``efSearch``) are set with :func:`set_search_params`.
    """
    return faiss.index_factory(dim, index_factory, faiss.METRIC_INNER_PRODUCT)


def train_index(index: faiss.Index, embeddings: np.ndarray, max_train_points: int | None = None, seed: int = 0) -> None:
    """Train ``index`` (a no-op for indexes that need none) on ``embeddings``, or on a random sample of
    ``max_train_points`` of them when there are more."""
    if index.is_trained:
        return
    embeddings = as_faiss_array(embeddings)
    if max_train_points is not None and len(embeddings) > max_train_points:
        rows = np.random.default_rng(seed).choice(len(embeddings), size=max_train_points, replace=False)
        embeddings = embeddings[np.sort(rows)]
    index.train(embeddings)


def set_search_params(index: faiss.Index, search_params: str | None) -> None:
    """Set faiss search parameters from a string such as ``"nprobe=32"`` or ``"efSearch=128"``.

    Without one, an IVF index probes ``min(nlist, 32)`` lists instead of faiss' default of 1, whose recall is
    usually too low for evaluation or mining.
    """
    if search_params:
        faiss.ParameterSpace().set_index_parameters(index, search_params)
        return
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:  # not an IVF index
        return
    ivf.nprobe = min(ivf.nlist, 32)


def search(
    query_embeddings: np.ndarray,
    doc_embeddings_or_index: np.ndarray | faiss.Index,
    top_k: int,
    index_factory: str = "Flat",
    search_params: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``top_k`` inner-product search. Returns ``(scores, indices)``, both ``(n_queries, k)``, best first.

    ``doc_embeddings_or_index`` is either a document matrix (indexed here, exact search by default) or a filled faiss
    index. ``k`` is ``top_k`` capped at the number of documents; an approximate index may leave slots it could not
    fill as index ``-1``.
    """
    if isinstance(doc_embeddings_or_index, faiss.Index):
        index = doc_embeddings_or_index
    else:
        docs = as_faiss_array(doc_embeddings_or_index)
        index = build_index(docs.shape[1], index_factory)
        train_index(index, docs)
        index.add(docs)
        set_search_params(index, search_params)
    queries = as_faiss_array(query_embeddings)
    k = min(top_k, index.ntotal)
    if k <= 0 or len(queries) == 0:
        return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
    if queries.shape[1] != index.d:
        raise ValueError(f"query dimension {queries.shape[1]} does not match the index dimension {index.d}")
    return index.search(queries, k)


def _faiss_reason(exc: Exception) -> str:
    """The reason in a faiss error, without the C++ function and source line it comes from."""
    return re.sub(r"^Error in .*? at \S+:\d+: ", "", str(exc).strip().splitlines()[-1])


class NonFiniteEmbeddingError(ValueError):
    """A model gave a NaN or infinite embedding: its output is broken, whatever the data."""


def _check_finite(embeddings: np.ndarray, ids: Sequence[str] | None, what: str) -> None:
    """Refuse NaN or infinite embeddings (a model that overflows under half precision, a broken checkpoint) with a
    :class:`NonFiniteEmbeddingError`: faiss leaves such a document out of every result list and returns nothing for
    such a query, without a word."""
    finite = np.isfinite(embeddings).all(axis=1)
    if finite.all():
        return
    row = int(np.argmin(finite))
    name = repr(ids[row]) if ids is not None else f"of row {row}"
    raise NonFiniteEmbeddingError(
        f"{what} {name} has a NaN or infinite embedding ({int((~finite).sum())} of {len(finite)} in this chunk): "
        "the model's output is broken (an overflow under half precision, say)"
    )


def _process_group() -> tuple[int, int]:
    """``(rank, world_size)`` of the initialized default process group, else ``(0, 1)``."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class DocumentIndex:
    """A faiss inner-product index over a corpus, filled chunk by chunk so that only the embeddings are held.

    Indexes that need training (IVF, PQ) are trained on the first chunk(s), at most ``max_train_points`` vectors, then
    everything is added; chunks after that go straight in. ``keep_ids`` names documents whose embeddings are also kept
    in :attr:`kept_embeddings` (mining uses it to score positives exactly).
    """

    def __init__(
        self,
        index_factory: str = "Flat",
        search_params: str | None = None,
        max_train_points: int = 100_000,
        keep_ids: Iterable[str] = (),
    ):
        self.index_factory = index_factory
        self.search_params = search_params
        self.max_train_points = max_train_points
        self.keep_ids = set(keep_ids)
        self.index: faiss.Index | None = None
        self.doc_ids: list[str] = []
        self.kept_embeddings: dict[str, np.ndarray] = {}
        self._pending: list[np.ndarray] = []  # embeddings waiting for the index to be trained
        self._pending_rows = 0
        self._seen_ids: set[str] = set()

    def __len__(self) -> int:
        return len(self.doc_ids)

    def create(self, dim: int) -> None:
        """Build the empty index for ``dim``-sized embeddings with its search parameters set, so that an index factory
        or search parameter faiss refuses is named before any document is encoded."""
        try:
            self.index = build_index(dim, self.index_factory)
        except RuntimeError as exc:
            raise ValueError(
                f"index_factory {self.index_factory!r} is not a faiss index for {dim}-sized embeddings: "
                f"{_faiss_reason(exc)}"
            ) from None
        try:
            set_search_params(self.index, self.search_params)
        except RuntimeError as exc:
            raise ValueError(
                f"search_params {self.search_params!r} do not apply to a {self.index_factory!r} index: "
                f"{_faiss_reason(exc)}"
            ) from None

    def add(self, doc_ids: Sequence[str], embeddings: np.ndarray) -> None:
        """Add one chunk of document embeddings."""
        embeddings = as_faiss_array(embeddings)
        if len(doc_ids) != len(embeddings):
            raise ValueError(f"{len(doc_ids)} ids for {len(embeddings)} embeddings")
        _check_finite(embeddings, doc_ids, "document")
        repeated = next((doc_id for doc_id in doc_ids if doc_id in self._seen_ids), None)
        if repeated is None and len(set(doc_ids)) < len(doc_ids):
            repeated = next(doc_id for i, doc_id in enumerate(doc_ids) if doc_id in doc_ids[:i])
        if repeated is not None:  # a search would return it twice, or fewer than top_k documents
            raise ValueError(f"document id {repeated!r} is added to the index twice")
        if self.index is None:
            self.create(embeddings.shape[1])
        elif embeddings.shape[1] != self.index.d:
            raise ValueError(f"embeddings of size {embeddings.shape[1]} for an index of size {self.index.d}")
        self._seen_ids.update(doc_ids)
        for row, doc_id in enumerate(doc_ids):
            if doc_id in self.keep_ids:
                self.kept_embeddings[doc_id] = embeddings[row].copy()
        self.doc_ids.extend(doc_ids)
        if self.index.is_trained:
            self.index.add(embeddings)
            return
        self._pending.append(embeddings)
        self._pending_rows += len(embeddings)
        if self._pending_rows >= self.max_train_points:
            self._train_and_flush()

    def finish(self) -> DocumentIndex:
        """Train on whatever is pending (a corpus smaller than ``max_train_points``) and set search parameters."""
        if self._pending:
            self._train_and_flush()
        if self.index is not None:
            set_search_params(self.index, self.search_params)
        return self

    def _train_and_flush(self) -> None:
        pending = np.concatenate(self._pending) if len(self._pending) > 1 else self._pending[0]
        logger.info(
            "Training faiss index %r on %d vectors", self.index_factory, min(len(pending), self.max_train_points)
        )
        train_index(self.index, pending, max_train_points=self.max_train_points)
        self.index.add(pending)
        self._pending, self._pending_rows = [], 0

    @classmethod
    def from_corpus(
        cls,
        model: Encoder,
        corpus: Mapping[str, str],
        batch_size: int = 64,
        chunk_size: int = 50_000,
        bf16: bool = False,
        index_factory: str = "Flat",
        search_params: str | None = None,
        keep_ids: Iterable[str] = (),
        show_progress_bar: bool = True,
        desc: str = "Encoding corpus",
    ) -> DocumentIndex:
        """Encode ``corpus`` (id -> text) ``chunk_size`` documents at a time and index each chunk.

        Under ``torchrun`` / ``accelerate launch`` (``torch.distributed`` initialized with several processes) each
        process encodes a contiguous 1/world share of every chunk and the shares are all-gathered in rank order, so
        every process ends with the same index while the encoding work is split across them. A model that tells its
        ``embedding_dim`` (a BiEncoder) gets its index built first, so faiss settings it refuses fail before encoding.
        """
        if batch_size < 1 or chunk_size < 1:
            raise ValueError(f"batch_size and chunk_size must be >= 1, got {batch_size} and {chunk_size}")
        index = cls(index_factory=index_factory, search_params=search_params, keep_ids=keep_ids)
        doc_ids = list(corpus)
        if not doc_ids:
            raise ValueError("the corpus is empty: there is nothing to index")
        dim = getattr(model, "embedding_dim", None)  # known (a BiEncoder): the index settings are checked up front
        if isinstance(dim, int) and dim > 0:
            index.create(dim)
        n_chunks = math.ceil(len(doc_ids) / chunk_size)
        for start in tqdm(
            range(0, len(doc_ids), chunk_size), desc=desc, unit="chunk", disable=not show_progress_bar or n_chunks < 2
        ):
            chunk_ids = doc_ids[start : start + chunk_size]
            rank, world = _process_group()
            share = chunk_ids[rank * len(chunk_ids) // world : (rank + 1) * len(chunk_ids) // world]
            # every process encodes as many texts (a short share repeats a document of the chunk, dropped after the
            # gather), so all make the same number of forward calls, which a sharded (FSDP) model needs
            padding = math.ceil(len(chunk_ids) / world) - len(share)
            texts = [corpus[doc_id] for doc_id in share] + [corpus[chunk_ids[-1]]] * padding
            embeddings = model.encode_documents(
                texts,
                batch_size=batch_size,
                bf16=bf16,
                show_progress_bar=show_progress_bar and rank == 0,
            )
            embeddings = np.asarray(embeddings, dtype=np.float32)[: len(share)]
            if world > 1:
                gathered: list[Any] = [None] * world
                dist.all_gather_object(gathered, embeddings)
                embeddings = np.concatenate([part for part in gathered if len(part)])
            index.add(chunk_ids, embeddings)
        return index.finish()

    def search(
        self, query_embeddings: np.ndarray, top_k: int, query_ids: Sequence[str] | None = None
    ) -> list[list[tuple[str, float]]]:
        """The ``top_k`` documents of each query as ``(doc_id, score)`` lists, best first.

        With ``query_ids``, a document whose id equals its query's id is skipped (one extra hit is fetched to make up
        for it), as in MTEB's and BEIR's exact search.
        """
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        if self._pending:  # documents waiting for the index's training are not searchable yet
            raise ValueError("the index is not finished: call finish() before searching")
        query_embeddings = as_faiss_array(query_embeddings)
        _check_finite(query_embeddings, query_ids, "query")
        if self.index is None:
            return [[] for _ in range(len(query_embeddings))]
        extra = 1 if query_ids is not None else 0
        scores, indices = search(query_embeddings, self.index, top_k + extra)
        results = []
        for row in range(len(scores)):
            skip = query_ids[row] if query_ids is not None else None
            hits = [
                (self.doc_ids[i], float(s))
                for s, i in zip(scores[row], indices[row])
                if i >= 0 and self.doc_ids[i] != skip
            ]
            results.append(hits[:top_k])
        return results


# --------------------------------------------------------------------------------------------------------------------
# metrics


def _id_text(value: Any, source: str, field: str | None) -> str:
    """An id as a string: a string as it is, an integer (``10``, ``numpy.int64(10)``) as its digits; anything else
    (a float, None) is refused."""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return str(int(value))
    raise DataFormatError(
        source, None, field, f"id {value!r} is a {type(value).__name__}: ids are strings (integers are read as strings)"
    )


def _string_keys(mapping: Mapping[Any, Any], source: str, field: str | None, where: str = "") -> Mapping[str, Any]:
    """``mapping`` itself when its keys are all strings, else a dict with integer keys as strings; two keys that are
    one string (``1`` and ``"1"``) are refused, as either could be meant."""
    if all(isinstance(key, str) for key in mapping):
        return mapping
    out: dict[str, Any] = {}
    original: dict[str, Any] = {}
    for key, value in mapping.items():
        text = _id_text(key, source, field)
        if text in out:
            raise DataFormatError(
                source,
                None,
                field,
                f"ids {original[text]!r} and {key!r}{where} are one id as strings; keep one of them",
            )
        out[text], original[text] = value, key
    return out


def _string_ids(nested: Mapping[Any, Mapping[Any, Any]], source: str, field: str | None) -> Mapping[str, Any]:
    """Qrels or a run (``{query_id: {doc_id: value}}``) with integer query and document ids as strings (pytrec_eval
    takes strings only, and fails with an obscure TypeError on anything else)."""
    outer = _string_keys(nested, source, field)
    inner = {qid: _string_keys(docs, source, field, f" (documents of query {qid!r})") for qid, docs in outer.items()}
    if outer is nested and all(inner[qid] is docs for qid, docs in outer.items()):
        return nested
    return inner


def _string_id_corpus(data: RetrievalCorpus, source: str) -> RetrievalCorpus:
    """``data`` itself when its ids are all strings, else a copy with integer document and query ids (corpus, queries
    and qrels alike, so that they still match) as strings; errors name ``source``."""
    corpus = _string_keys(data.corpus, source, "corpus")
    queries = _string_keys(data.queries, source, "queries")
    qrels = _string_ids(data.qrels, source, "qrels")
    if corpus is data.corpus and queries is data.queries and qrels is data.qrels:
        return data
    return dataclasses.replace(data, corpus=dict(corpus), queries=dict(queries), qrels=qrels)


def relevant_queries(qrels: Qrels) -> list[str]:
    """Ids of the queries with at least one relevant (grade > 0) judgment: the ones a retrieval metric averages over."""
    return [qid for qid, judged in qrels.items() if any(grade > 0 for grade in judged.values())]


def _integer_grade(query_id: str, doc_id: str, grade: float) -> int:
    """trec_eval's gains are integers: a fractional grade would be cut (0.5 to 0, not relevant) without a word."""
    if not math.isfinite(float(grade)) or float(grade) != int(grade):
        raise ValueError(f"qrels grade {grade!r} of query {query_id!r}, document {doc_id!r} is not an integer")
    return int(grade)


def trec_eval_ranking(docs: Mapping[str, float]) -> list[tuple[str, float]]:
    """``(doc_id, score)`` in trec_eval's order: score descending, ties broken by document id descending. trec_eval
    holds scores as float32, so scores that differ only below float32 precision tie."""
    return sorted(docs.items(), key=lambda item: (float(np.float32(item[1])), item[0]), reverse=True)


def per_query_scores(
    qrels: Qrels,
    run: Mapping[str, Mapping[str, float]],
    ndcg_at: Sequence[int] = (10,),
    recall_at: Sequence[int] = (100,),
    mrr_at: Sequence[int] = (10,),
) -> dict[str, dict[str, float]]:
    """pytrec_eval metrics of every query with a relevant judgment: ``{query_id: {"ndcg@10": ..., ...}}``.

    A document is relevant when its grade is > 0; nDCG uses the grades as gains (trec_eval's ``ndcg_cut``). ``map`` is
    trec_eval's MAP over everything the run retrieved (the top ``top_k``). A NaN run score is refused. Integer query and
    document ids are read as strings, in ``qrels`` and ``run`` alike (two ids that are one string, ``1`` and ``"1"``,
    are refused).
    """
    qrels = _string_ids(qrels, "qrels", None)
    run = _string_ids(run, "run", None)
    queries = relevant_queries(qrels)
    qrels_int = {qid: {doc_id: _integer_grade(qid, doc_id, grade) for doc_id, grade in qrels[qid].items()}
                 for qid in queries}  # fmt: skip
    run_float = {qid: {doc_id: float(score) for doc_id, score in run.get(qid, {}).items()} for qid in queries}
    for qid, docs in run_float.items():  # trec_eval would sort a NaN score anywhere, and rank the others around it
        unranked = next((doc_id for doc_id, score in docs.items() if math.isnan(score)), None)
        if unranked is not None:
            raise ValueError(f"run score of query {qid!r}, document {unranked!r} is NaN: it cannot be ranked")

    measures = {"map"} | {f"ndcg_cut.{k}" for k in ndcg_at} | {f"recall.{k}" for k in recall_at}
    results = pytrec_eval.RelevanceEvaluator(qrels_int, measures).evaluate(run_float)
    # trec_eval's recip_rank has no cutoff: MRR@k is recip_rank on the run cut to each query's k best documents (in
    # trec_eval's own order), so a first relevant document below rank k scores 0, as in MTEB's MRR@k.
    mrr = {
        k: pytrec_eval.RelevanceEvaluator(qrels_int, {"recip_rank"}).evaluate(
            {qid: dict(trec_eval_ranking(docs)[:k]) for qid, docs in run_float.items()}
        )
        for k in mrr_at
    }

    scores = {}
    for qid in queries:
        # pytrec_eval leaves out queries that retrieved nothing (absent from the run or an empty ranking), so such a
        # query would silently drop out of the average; it counts as 0 on every metric instead.
        found = results.get(qid, {})
        row = {f"ndcg@{k}": found.get(f"ndcg_cut_{k}", 0.0) for k in ndcg_at}
        row.update({f"recall@{k}": found.get(f"recall_{k}", 0.0) for k in recall_at})
        row.update({f"mrr@{k}": mrr[k].get(qid, {}).get("recip_rank", 0.0) for k in mrr_at})
        row["map"] = found.get("map", 0.0)
        scores[qid] = row
    return scores


def score_run(
    qrels: Qrels,
    run: Mapping[str, Mapping[str, float]],
    ndcg_at: Sequence[int] = (10,),
    recall_at: Sequence[int] = (100,),
    mrr_at: Sequence[int] = (10,),
) -> dict[str, float]:
    """Mean pytrec_eval metrics of a run (``{query_id: {doc_id: score}}``) against graded qrels.

    The mean is over the queries of ``qrels`` with at least one relevant (grade > 0) judgment; a query the run does not
    cover scores 0. With the default cutoffs the keys are ``ndcg@10``, ``recall@100``, ``mrr@10`` and ``map``.
    """
    per_query = per_query_scores(qrels, run, ndcg_at=ndcg_at, recall_at=recall_at, mrr_at=mrr_at)
    keys = [f"ndcg@{k}" for k in ndcg_at] + [f"recall@{k}" for k in recall_at] + [f"mrr@{k}" for k in mrr_at] + ["map"]
    if not per_query:
        return dict.fromkeys(keys, 0.0)
    return {key: float(np.mean([row[key] for row in per_query.values()])) for key in keys}


# --------------------------------------------------------------------------------------------------------------------
# evaluator


class RetrievalEvaluator:
    """Zero-shot dense retrieval evaluation of one :class:`RetrievalCorpus` split, MTEB-style.

    ``evaluator(model)`` encodes the corpus ``chunk_size`` documents at a time into a faiss index (exact by default),
    retrieves the ``top_k`` documents of every query that has a relevant judgment, and returns
    ``{"ndcg@10", "recall@100", "mrr@10", "map"}`` (see :func:`score_run`). The run of the last call is kept in
    :attr:`last_run` (``{query_id: {doc_id: score}}``).

    Judged queries without a relevant document are left out (their number is logged); qrels without any relevant
    judgment (an empty split, grade-0 judgments only), and a relevant judgment whose query has no text or whose
    document is not in the corpus, are refused with a :class:`DataFormatError`. Integer document and query ids (a
    corpus built by hand, ``qrels={1: {10: 1}}``) are read as strings in the corpus, queries and qrels alike, so the
    run's ids are strings; two ids that are one string (``1`` and ``"1"``) are refused.
    """

    def __init__(
        self,
        data: RetrievalCorpus,
        top_k: int = 1000,
        batch_size: int = 64,
        bf16: bool = False,
        chunk_size: int = 50_000,
        index_factory: str = "Flat",
        search_params: str | None = None,
        ignore_identical_ids: bool = True,
        show_progress_bar: bool = True,
        name: str = "",
    ):
        for setting, value in (("top_k", top_k), ("batch_size", batch_size), ("chunk_size", chunk_size)):
            if value < 1:
                raise ValueError(f"{setting} must be >= 1, got {value}")
        self.data = data = _string_id_corpus(data, name or data.name or "RetrievalCorpus")
        self.top_k = top_k
        self.batch_size = batch_size
        self.bf16 = bf16
        self.chunk_size = chunk_size
        self.index_factory = index_factory
        self.search_params = search_params
        self.ignore_identical_ids = ignore_identical_ids
        self.show_progress_bar = show_progress_bar
        self.name = name or data.name
        self.query_ids = relevant_queries(data.qrels)
        source = self.name or "RetrievalCorpus"
        if not self.query_ids:  # every metric would read 0.0, like a model that finds nothing
            raise DataFormatError(
                source,
                None,
                "qrels",
                f"no judged query has a relevant document (grade > 0) among {len(data.qrels)} judged queries: "
                "there is nothing to evaluate",
            )
        missing = [qid for qid in self.query_ids if qid not in data.queries]
        if missing:
            raise DataFormatError(
                source,
                None,
                "qrels",
                f"{len(missing)} judged queries have no text, e.g. {missing[:3]}",
            )
        # a relevant document the corpus lacks can never be retrieved: it would lower every metric of every model
        unknown = [(qid, doc_id) for qid in self.query_ids for doc_id, grade in data.qrels[qid].items()
                   if grade > 0 and doc_id not in data.corpus]  # fmt: skip
        if unknown:
            raise DataFormatError(
                source,
                None,
                "qrels",
                f"{len(unknown)} relevant judgments name documents that are not in the corpus, which no model can "
                f"retrieve: (query, document) {unknown[:3]}",
            )
        left_out = len(data.qrels) - len(self.query_ids)
        if left_out:
            logger.info(
                "%d of %d judged queries%s have no relevant document (grade > 0) and are left out of the mean",
                left_out,
                len(data.qrels),
                f" ({self.name})" if self.name else "",
            )
        self.last_run: Run = {}

    def build_index(self, model: Encoder, keep_ids: Iterable[str] = ()) -> DocumentIndex:
        """The corpus encoded by ``model`` in this evaluator's index (reusable, e.g. for mining with the same model)."""
        label = f" ({self.name})" if self.name else ""
        return DocumentIndex.from_corpus(
            model,
            self.data.corpus,
            batch_size=self.batch_size,
            chunk_size=self.chunk_size,
            bf16=self.bf16,
            index_factory=self.index_factory,
            search_params=self.search_params,
            show_progress_bar=self.show_progress_bar,
            desc=f"Encoding corpus{label}",
            keep_ids=keep_ids,
        )

    def retrieve(self, model: Encoder, index: DocumentIndex | None = None) -> Run:
        """The run: the ``top_k`` documents and scores of each evaluated query (``index``: a prebuilt corpus index)."""
        index = index if index is not None else self.build_index(model)
        run: Run = {}
        for start in range(0, len(self.query_ids), self.chunk_size):
            qids = self.query_ids[start : start + self.chunk_size]
            embeddings = model.encode_queries(
                [self.data.queries[qid] for qid in qids],
                batch_size=self.batch_size,
                bf16=self.bf16,
                show_progress_bar=self.show_progress_bar,
            )
            hits = index.search(embeddings, self.top_k, query_ids=qids if self.ignore_identical_ids else None)
            run.update({qid: dict(found) for qid, found in zip(qids, hits)})
        return run

    def __call__(self, model: Encoder, index: DocumentIndex | None = None) -> dict[str, float]:
        self.last_run = self.retrieve(model, index)
        metrics = score_run(self.data.qrels, self.last_run)
        logger.info("Retrieval metrics%s: %s", f" ({self.name})" if self.name else "", metrics)
        return metrics
