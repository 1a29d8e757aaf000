"""Hard-negative mining: faiss top-k candidates of a model, filtered relative to each query's positives.

For every query with a relevant judgment, the model retrieves its top ``range_max`` (+ number of positives) documents.
Judged positives are skipped, and so are their copies (other documents with a positive's exact text, which tie with it:
unlabeled positives, which sentence-transformers' text-deduplicated corpus skips too), and so are the documents a query
excludes (``excluded``: judged relevant elsewhere, e.g. dropped by relabeling); the remaining candidates keep
their rank (0 = the most similar non-positive) and only ranks in ``[range_min, range_max)`` are eligible. Eligible
candidates then pass the positive-aware filters (as in sentence-transformers' ``mine_hard_negatives`` and
NV-Retriever, Moreira et al. 2024, arXiv:2407.15831):

- ``absolute_margin`` m: keep if ``score <= pos - m``;
- ``relative_margin`` r: keep if ``score <= pos - |pos| * r`` (``pos * (1 - r)`` for a non-negative positive score;
  NV-Retriever's TopK-PercPos with r = 0.05);
- ``max_score`` / ``min_score``: keep if ``min_score <= score <= max_score``;

where ``pos`` is the query's *lowest* positive score: a candidate scored close to any positive may be an unlabeled
positive, and the hardest (lowest-scored) positive is the safest reference, so with several positives a negative must
sit below all of them. The first ``num_negatives`` survivors, best first, become the negatives.

Unlike sentence-transformers, ranks are counted before the score filters, so ``range_min=10`` always skips the same
ten most similar documents whatever the margins are.

The rows are canonical training rows (:func:`hf_robust_ir.data.beir.rows_from_qrels`): positives first with their
grades, then the negatives (source ``"mined"``); ``teacher_scores`` holds the miner's inner-product score of every
listed document, positives included (computed exactly from their embeddings, whether or not they were retrieved).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

import datasets
import numpy as np
from tqdm.auto import tqdm

from hf_robust_ir.data.beir import rows_from_qrels
from hf_robust_ir.data.schema import DataFormatError, RetrievalCorpus
from hf_robust_ir.evaluation import DocumentIndex, Encoder

logger = logging.getLogger(__name__)


@dataclass
class MiningStats:
    """What the filters removed, over all queries (counts of candidates in the rank window)."""

    queries: int = 0
    candidates: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    negatives: int = 0
    short_queries: int = 0  # queries that got fewer than num_negatives negatives
    copies_of_positives: int = 0  # retrieved documents skipped for holding a positive's exact text
    excluded: int = 0  # retrieved documents skipped because their query excludes them

    def as_dict(self) -> dict:
        return {
            "queries": self.queries,
            "candidates_in_range": self.candidates,
            "skipped": dict(self.skipped),
            "negatives": self.negatives,
            "queries_short_of_negatives": self.short_queries,
            "copies_of_positives_skipped": self.copies_of_positives,
            "excluded_skipped": self.excluded,
        }


def select_negatives(
    ranked: list[tuple[str, float]],
    positive_scores: dict[str, float],
    num_negatives: int = 15,
    range_min: int = 0,
    range_max: int = 100,
    absolute_margin: float | None = None,
    relative_margin: float | None = None,
    max_score: float | None = None,
    min_score: float | None = None,
    stats: MiningStats | None = None,
    copies_of_positives: Collection[str] = (),
    excluded: Collection[str] = (),
) -> list[tuple[str, float]]:
    """Pick the negatives of one query from its retrieved ``(doc_id, score)`` list (best first).

    ``positive_scores`` maps each judged positive to its score; positives are never negatives, nor are
    ``copies_of_positives`` and ``excluded`` documents (skipped like positives, before ranks are counted). See the
    module docstring for the rank window and the filters.
    """
    non_positive = [(doc_id, score) for doc_id, score in ranked if doc_id not in positive_scores]
    for skipped, counter in ((copies_of_positives, "copies_of_positives"), (excluded, "excluded")):
        if skipped:
            kept = [(doc_id, score) for doc_id, score in non_positive if doc_id not in skipped]
            if stats is not None:
                setattr(stats, counter, getattr(stats, counter) + len(non_positive) - len(kept))
            non_positive = kept
    window = non_positive[range_min:range_max]
    reference = min(positive_scores.values()) if positive_scores else None
    thresholds: list[tuple[str, float]] = []  # (filter name, highest score it keeps)
    if reference is not None and absolute_margin is not None:
        thresholds.append(("absolute_margin", reference - absolute_margin))
    if reference is not None and relative_margin is not None:
        thresholds.append(("relative_margin", reference - abs(reference) * relative_margin))
    if max_score is not None:
        thresholds.append(("max_score", max_score))

    negatives = []
    for doc_id, score in window:
        rejected_by = next((name for name, highest in thresholds if score > highest), None)
        if rejected_by is None and min_score is not None and score < min_score:
            rejected_by = "min_score"
        if stats is not None:
            stats.candidates += 1
            if rejected_by is not None:
                stats.skipped[rejected_by] = stats.skipped.get(rejected_by, 0) + 1
        if rejected_by is None and len(negatives) < num_negatives:
            negatives.append((doc_id, score))
    if stats is not None:
        stats.queries += 1
        stats.negatives += len(negatives)
        stats.short_queries += len(negatives) < num_negatives
    return negatives


def check_mining_arguments(
    num_negatives: int,
    range_min: int,
    range_max: int,
    batch_size: int = 64,
    chunk_size: int = 50_000,
    min_score: float | None = None,
    max_score: float | None = None,
) -> None:
    """A ``ValueError`` naming the first setting of :func:`mine_hard_negatives` that cannot work."""
    for name, value in (("num_negatives", num_negatives), ("batch_size", batch_size), ("chunk_size", chunk_size)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if not 0 <= range_min < range_max:
        raise ValueError(f"need 0 <= range_min < range_max, got range_min={range_min}, range_max={range_max}")
    if num_negatives > range_max - range_min:
        raise ValueError(
            f"num_negatives={num_negatives} does not fit in the rank window [{range_min}, {range_max}); "
            "raise range_max or lower num_negatives"
        )
    if min_score is not None and max_score is not None and min_score > max_score:
        raise ValueError(f"min_score={min_score} is above max_score={max_score}: no negative could be kept")


def mine_hard_negatives(
    model: Encoder,
    data: RetrievalCorpus,
    num_negatives: int = 15,
    range_min: int = 0,
    range_max: int = 100,
    absolute_margin: float | None = None,
    relative_margin: float | None = None,
    max_score: float | None = None,
    min_score: float | None = None,
    batch_size: int = 64,
    chunk_size: int = 50_000,
    index_factory: str = "Flat",
    search_params: str | None = None,
    bf16: bool = False,
    ignore_identical_ids: bool = True,
    show_progress_bar: bool = True,
    stats: MiningStats | None = None,
    index: DocumentIndex | None = None,
    excluded: Mapping[str, Collection[str]] | None = None,
) -> datasets.Dataset:
    """Canonical training rows of ``data``'s judged queries, with hard negatives mined by ``model``.

    The corpus is encoded ``chunk_size`` documents at a time into a faiss inner-product index (``index_factory``:
    ``"Flat"`` is exact; ``"IVF4096,Flat"`` or ``"HNSW32"`` for corpora of millions, with ``search_params`` such as
    ``"nprobe=64"``), so memory holds the embeddings and not the encoder's intermediate outputs. Queries are encoded
    and searched in chunks of the same size. A document whose id equals the query id is never a candidate unless
    ``ignore_identical_ids`` is False. Pass a :class:`MiningStats` to receive filter counts. Pass an already built
    ``index`` of ``data.corpus`` made with the same ``model`` to skip encoding the corpus (it is shared with an
    evaluation of the same corpus, for instance). ``excluded`` maps a query id to documents never to mine as its
    negatives (a row's :data:`~hf_robust_ir.data.schema.EXCLUDED_COLUMN`).
    """
    check_mining_arguments(num_negatives, range_min, range_max, batch_size, chunk_size, min_score, max_score)
    positives = {qid: [doc_id for doc_id, grade in judged.items() if grade > 0] for qid, judged in data.qrels.items()}
    positives = {qid: docs for qid, docs in positives.items() if docs}
    missing_docs = sorted({doc_id for docs in positives.values() for doc_id in docs} - data.corpus.keys())
    if missing_docs:
        raise DataFormatError(
            data.name or "RetrievalCorpus", None, "qrels", f"positives not in corpus: {missing_docs[:5]}"
        )
    missing_queries = [qid for qid in positives if qid not in data.queries]
    if missing_queries:
        raise DataFormatError(
            data.name or "RetrievalCorpus", None, "qrels", f"judged queries without text: {missing_queries[:5]}"
        )

    positive_ids = {doc_id for docs in positives.values() for doc_id in docs}
    copies = _copies_of_positives(data.corpus, positives)
    excluded = {qid: set(docs) for qid, docs in (excluded or {}).items() if docs}
    if index is None:
        index = DocumentIndex.from_corpus(
            model,
            data.corpus,
            batch_size=batch_size,
            chunk_size=chunk_size,
            bf16=bf16,
            index_factory=index_factory,
            search_params=search_params,
            keep_ids=positive_ids,
            show_progress_bar=show_progress_bar,
        )
    unkept = sorted(positive_ids - index.kept_embeddings.keys())
    if unkept:  # a shared index may not hold the positives' embeddings: encode just those
        vectors = model.encode_documents(
            [data.corpus[d] for d in unkept], batch_size=batch_size, bf16=bf16, show_progress_bar=show_progress_bar
        )
        index.kept_embeddings.update(zip(unkept, np.asarray(vectors, dtype=np.float32)))
    stats = stats if stats is not None else MiningStats()
    query_ids = list(positives)
    candidates: dict[str, list[tuple[str, float]]] = {}
    for start in tqdm(
        range(0, len(query_ids), chunk_size),
        desc="Mining negatives",
        unit="chunk",
        disable=not show_progress_bar or len(query_ids) <= chunk_size,
    ):
        qids = query_ids[start : start + chunk_size]
        embeddings = model.encode_queries(
            [data.queries[qid] for qid in qids], batch_size=batch_size, bf16=bf16, show_progress_bar=show_progress_bar
        )
        embeddings = np.asarray(embeddings, dtype=np.float32)
        # enough hits that range_max non-positive candidates remain after skipping the positives and their copies
        # (at most range_max copies are made up for: a text repeated thousands of times must not blow up top_k)
        top_k = range_max + max(
            len(positives[qid]) + min(len(copies.get(qid, ())) + len(excluded.get(qid, ())), range_max) for qid in qids
        )
        hits = index.search(embeddings, top_k, query_ids=qids if ignore_identical_ids else None)
        for row, qid in enumerate(qids):
            positive_scores = {
                doc_id: float(np.dot(embeddings[row], index.kept_embeddings[doc_id])) for doc_id in positives[qid]
            }
            negatives = select_negatives(
                hits[row],
                positive_scores,
                num_negatives=num_negatives,
                range_min=range_min,
                range_max=range_max,
                absolute_margin=absolute_margin,
                relative_margin=relative_margin,
                max_score=max_score,
                min_score=min_score,
                stats=stats,
                copies_of_positives=copies.get(qid, ()),
                excluded=excluded.get(qid, ()),
            )
            candidates[qid] = list(positive_scores.items()) + negatives

    if stats.candidates:
        for name, count in stats.skipped.items():
            logger.info(
                "Skipped %d of %d candidates (%.2f%%) by %s",
                count,
                stats.candidates,
                100 * count / stats.candidates,
                name,
            )
    if stats.copies_of_positives:
        logger.info("Skipped %d candidates holding the exact text of a positive", stats.copies_of_positives)
    if stats.excluded:
        logger.info("Skipped %d candidates their query excludes", stats.excluded)
    if stats.short_queries:
        logger.info(
            "%d of %d queries got fewer than %d negatives; widen range_max or loosen the filters for more",
            stats.short_queries,
            stats.queries,
            num_negatives,
        )
    return rows_from_qrels(data, candidates, candidate_source="mined")


def _copies_of_positives(corpus: Mapping[str, str], positives: Mapping[str, list[str]]) -> dict[str, set[str]]:
    """For each query with copies: the other documents whose text is exactly one of its positives' texts."""
    positive_texts = {corpus[doc_id] for docs in positives.values() for doc_id in docs}
    same_text: dict[str, list[str]] = {}
    for doc_id, text in corpus.items():
        if text in positive_texts:
            same_text.setdefault(text, []).append(doc_id)
    copies = {}
    for qid, docs in positives.items():
        found = {doc_id for positive in docs for doc_id in same_text[corpus[positive]]}.difference(docs)
        if found:
            copies[qid] = found
    return copies
