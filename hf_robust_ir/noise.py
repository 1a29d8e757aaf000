"""Label noise with known ground truth, for benchmarks of noise-robust training.

Each generator turns clean canonical training rows (:data:`hf_robust_ir.data.schema.ROW_FEATURES`, e.g. from
:func:`~hf_robust_ir.data.beir.rows_from_qrels` or :func:`~hf_robust_ir.mining.mine_hard_negatives`) into noisy rows
and returns a :class:`NoiseResult`: the rows plus one change record per altered candidate.

- :class:`SemanticSwapNoise` (false positives that look right, as in Sharma 2025, arXiv 2512.13237): for a fraction
  ``rate`` of the queries, every labeled positive is replaced by a passage drawn from a model's top-``k``
  *non-relevant* candidates for that query: close but wrong.
- :class:`UniformSwapNoise` (the control): the same, with passages drawn uniformly from the corpus.
- :class:`FalseNegativeInjection` (sparse labels): among queries with several positives, a fraction ``rate`` of the
  positives become negatives (label 0), as in mined data where unlabeled relevant passages sit among the negatives.

The noisy rows look like ordinary training data to the trainer: a swapped-in wrong positive keeps the label (> 0) of
the positive it replaces, a moved false negative gets label 0; only ``label_source`` says ``"noise"`` on the changed
candidates. The ground truth lives in :attr:`NoiseResult.changes`, records with the keys of :data:`CHANGE_FIELDS`:

- ``query_id``, ``kind`` (``"semantic_swap"``, ``"uniform_swap"`` or ``"false_negative"``);
- ``position``: index of the changed candidate in the *clean* row; ``doc_id`` / ``label``: what was there;
- ``new_doc_id`` / ``new_label``: what is there now (``new_doc_id`` is None for a false negative, whose document
  stays in place with ``new_label`` 0);
- ``rank`` / ``score``: for a semantic swap, the new passage's 0-based rank among the query's non-relevant candidates
  and the model's score for it (None otherwise);
- ``removed_negative_positions``: when a swapped-in passage was already a negative of the row, that negative is
  removed, every copy of it (a passage is never both a positive and a negative of one query); their indices in the
  clean row, else an empty list.

Replaying the records on the clean rows (replace at ``position``, then delete the ``removed_negative_positions``
entries) gives the noisy rows exactly.

**Determinism and nested noise levels.** The queries eligible for a kind of noise are sorted by id and permuted once
with ``numpy.random.default_rng(seed)``; rate ``r`` takes the first ``n(r)`` of that permutation, where ``n(r)`` is
``r * n_eligible`` rounded half up (:func:`noise_count`). The passages drawn for one query come from a generator
seeded by ``(seed, crc32(query_id))``. So the same seed gives the same rows, a higher rate's noisy queries are a
superset of a lower rate's with the same replacements, and for one seed the semantic and the uniform swap corrupt
the same queries, which makes them a like-for-like comparison. Row order does not matter.

**Teacher scores.** A row's ``teacher_scores`` stay aligned with its ``doc_ids``. A swapped-in passage that was
already in the row keeps that row's teacher score for it; otherwise it gets the candidate's score from the swap model
(semantic swap) or ``NaN`` (uniform swap; the collator reads ``NaN`` as "no teacher score"). A false negative keeps
its teacher score. Rows without teacher scores stay without.

Apply noise to *training* rows only: evaluation qrels must stay clean, or the measured effect of noise means nothing.
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import zlib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import datasets
import numpy as np

from hf_robust_ir.data.schema import RetrievalCorpus, check_candidate_lists
from hf_robust_ir.evaluation import DocumentIndex, Encoder

logger = logging.getLogger(__name__)

NOISE_SOURCE = "noise"
"""``label_source`` of every candidate a noise generator changed."""

CHANGE_FIELDS = (
    "query_id",
    "kind",
    "position",
    "doc_id",
    "label",
    "new_doc_id",
    "new_label",
    "rank",
    "score",
    "removed_negative_positions",
)

Candidates = Mapping[str, Sequence[tuple[str, float]]]
"""``query_id -> [(doc_id, score), ...]``: a retriever's ranked candidates per query."""

REQUIRED_COLUMNS = ("query_id", "query", "doc_ids", "labels", "teacher_scores", "label_source")
CANDIDATE_LISTS = ("doc_ids", "labels", "teacher_scores", "label_source")
"""A row's per-candidate lists: ``labels`` has one value per doc id, the others one each or none."""


# --------------------------------------------------------------------------------------------------------------------
# selection


def check_rate(rate: float) -> float:
    """``rate`` as a float; ``ValueError`` unless it is a number in [0, 1]."""
    if isinstance(rate, bool) or not isinstance(rate, numbers.Real) or not 0.0 <= float(rate) <= 1.0:
        raise ValueError(f"rate must be a number in [0, 1], got {rate!r}")
    return float(rate)


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def noise_count(rate: float, n: int) -> int:
    """How many of ``n`` items a rate selects: ``rate * n`` rounded half up (0.5 -> 1), so ``noise_count(0.5, 5)`` is 3.

    The product is first rounded to 9 decimals so that float error (``0.7 * 10 = 7.000000000000001``) does not count.
    """
    return int(math.floor(round(check_rate(rate) * n, 9) + 0.5))


def select_queries(query_ids: Iterable[str], rate: float, seed: int) -> list[str]:
    """The noisy queries: the first :func:`noise_count` of one seeded permutation of the sorted unique ids.

    Deterministic in ``seed`` and independent of the input order; for one seed, the selection at a higher rate starts
    with (so contains) the selection at any lower rate.
    """
    ids = sorted(set(query_ids))
    order = np.random.default_rng(_check_seed(seed)).permutation(len(ids))
    return [ids[i] for i in order[: noise_count(rate, len(ids))]]


def query_rng(seed: int, query_id: str) -> np.random.Generator:
    """The random generator for one query's draws, seeded by ``(seed, crc32(query_id))``: the same at every rate."""
    return np.random.default_rng([_check_seed(seed), zlib.crc32(query_id.encode("utf-8"))])


# --------------------------------------------------------------------------------------------------------------------
# candidates


def retrieve_candidates(
    model: Encoder,
    queries: Mapping[str, str],
    corpus: Mapping[str, str] | None = None,
    top_k: int = 100,
    index: DocumentIndex | None = None,
    batch_size: int = 64,
    bf16: bool = False,
    chunk_size: int = 50_000,
    ignore_identical_ids: bool = True,
    show_progress_bar: bool = False,
) -> dict[str, list[tuple[str, float]]]:
    """Each query's ``top_k`` documents under ``model`` as ``query_id -> [(doc_id, score), ...]``, best first.

    Pass a prebuilt ``index`` of the corpus (e.g. the one mining used, see
    :func:`~hf_robust_ir.mining.mine_hard_negatives`) to skip encoding the corpus; otherwise ``corpus`` is encoded.
    Compute the candidates once and hand them to :class:`SemanticSwapNoise` for every rate and seed. Positives are
    among the retrieved documents and are filtered out later, so ask for ``top_k`` = swap ``top_k + skip_top`` plus the
    largest number of positives a query has.
    """
    if index is None:
        if corpus is None:
            raise ValueError("retrieve_candidates needs the corpus (id -> text) or a prebuilt DocumentIndex")
        index = DocumentIndex.from_corpus(
            model,
            corpus,
            batch_size=batch_size,
            chunk_size=chunk_size,
            bf16=bf16,
            show_progress_bar=show_progress_bar,
            desc="Encoding corpus (noise candidates)",
        )
    query_ids = list(queries)
    candidates: dict[str, list[tuple[str, float]]] = {}
    for start in range(0, len(query_ids), chunk_size):
        qids = query_ids[start : start + chunk_size]
        embeddings = model.encode_queries(
            [queries[qid] for qid in qids], batch_size=batch_size, bf16=bf16, show_progress_bar=show_progress_bar
        )
        hits = index.search(
            np.asarray(embeddings, dtype=np.float32), top_k, query_ids=qids if ignore_identical_ids else None
        )
        candidates.update(zip(qids, hits))
    return candidates


# --------------------------------------------------------------------------------------------------------------------
# result


@dataclass
class NoiseResult:
    """Noisy rows and the record of every change (see the module docstring for the record's keys)."""

    rows: datasets.Dataset
    changes: list[dict[str, Any]]
    config: dict[str, Any]
    eligible_queries: int
    selected_queries: list[str] = field(default_factory=list)
    shortfall_queries: list[str] = field(default_factory=list)
    """Selected queries with fewer replacement passages available than positives (some positives stayed)."""

    @property
    def changed_queries(self) -> list[str]:
        """Ids of the queries with at least one change, in row order."""
        return list(dict.fromkeys(change["query_id"] for change in self.changes))

    def summary(self) -> dict[str, Any]:
        return {
            **self.config,
            "queries": len(self.rows),
            "eligible_queries": self.eligible_queries,
            "selected_queries": len(self.selected_queries),
            "changed_queries": len(self.changed_queries),
            "changes": len(self.changes),
            "removed_negatives": sum(len(c["removed_negative_positions"]) for c in self.changes),
            "shortfall_queries": len(self.shortfall_queries),
        }

    def save(self, folder: str | Path) -> None:
        """Write the rows (``save_to_disk`` + ``rows.jsonl``), ``changes.jsonl`` and ``noise.json`` (the summary)."""
        folder = Path(folder)
        self.rows.save_to_disk(str(folder))
        self.rows.to_json(str(folder / "rows.jsonl"), lines=True)
        with open(folder / "changes.jsonl", "w", encoding="utf-8") as f:
            for change in self.changes:
                f.write(json.dumps(change) + "\n")
        (folder / "noise.json").write_text(json.dumps(self.summary(), indent=2) + "\n")


# --------------------------------------------------------------------------------------------------------------------
# rows


class _Rows:
    """The rows' columns as Python lists, edited in place and turned back into a Dataset with the same features.

    A row without candidates, or whose ``labels`` / ``teacher_scores`` / ``label_source`` do not match its
    ``doc_ids``, is refused (:class:`~hf_robust_ir.data.schema.DataFormatError` naming the row and the field).
    """

    def __init__(self, rows: datasets.Dataset):
        missing = [name for name in REQUIRED_COLUMNS if name not in rows.column_names]
        if missing:
            raise ValueError(
                f"noise needs canonical rows with columns {REQUIRED_COLUMNS}; missing {missing} "
                "(convert with hf_robust_ir.data.load_training_data)"
            )
        self.features = rows.features
        self.columns = rows.to_dict()
        for i, row in enumerate(zip(*(self.columns[name] for name in CANDIDATE_LISTS))):
            check_candidate_lists(dict(zip(CANDIDATE_LISTS, row)), "rows", i + 1, fields=CANDIDATE_LISTS[1:])
        self.query_ids: list[str] = self.columns["query_id"]
        duplicates = sorted(qid for qid, count in Counter(self.query_ids).items() if count > 1)
        if duplicates:
            raise ValueError(f"noise needs one row per query; query ids repeated: {duplicates[:5]}")
        self.row_of = {qid: i for i, qid in enumerate(self.query_ids)}

    def positives(self, i: int) -> list[int]:
        """Positions of row ``i``'s positives (label > 0)."""
        return [j for j, label in enumerate(self.columns["labels"][i]) if label > 0]

    def to_dataset(self) -> datasets.Dataset:
        return datasets.Dataset.from_dict(self.columns, features=self.features)


class _Pick(NamedTuple):
    doc_id: str
    rank: int | None = None
    score: float | None = None


def _change(query_id: str, kind: str, position: int, doc_id: str, label: float, **new: Any) -> dict[str, Any]:
    record = dict.fromkeys(CHANGE_FIELDS)
    record["removed_negative_positions"] = []
    record.update(query_id=query_id, kind=kind, position=position, doc_id=doc_id, label=float(label), **new)
    return record


def _judged_relevant(data: RetrievalCorpus | Mapping[str, str] | None) -> dict[str, set[str]]:
    if not isinstance(data, RetrievalCorpus):
        return {}
    return {qid: {did for did, grade in judged.items() if grade > 0} for qid, judged in data.qrels.items()}


def _corpus_of(data: RetrievalCorpus | Mapping[str, str] | None) -> Mapping[str, str] | None:
    return data.corpus if isinstance(data, RetrievalCorpus) else data


# --------------------------------------------------------------------------------------------------------------------
# positive swaps


class _PositiveSwap:
    """Shared part of the swaps: select queries, draw replacements per query, replace every positive."""

    kind = ""

    def __init__(self, rate: float, seed: int):
        self.rate = check_rate(rate)
        self.seed = _check_seed(seed)

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "rate": self.rate, "seed": self.seed}

    def _draw(
        self,
        queries: dict[str, str],
        excluded: dict[str, set[str]],
        needed: dict[str, int],
        data: RetrievalCorpus | Mapping[str, str] | None,
    ) -> dict[str, list[_Pick]]:
        raise NotImplementedError

    def __call__(self, rows: datasets.Dataset, data: RetrievalCorpus | Mapping[str, str] | None = None) -> NoiseResult:
        return self.apply(rows, data)

    def apply(self, rows: datasets.Dataset, data: RetrievalCorpus | Mapping[str, str] | None = None) -> NoiseResult:
        """Replace every positive of the selected training queries; ``data``: the corpus or a RetrievalCorpus.

        With a :class:`RetrievalCorpus`, documents its qrels judge relevant (grade > 0) to a query are never drawn for
        it, besides the row's own positives.
        """
        table = _Rows(rows)
        columns = table.columns
        positives = {qid: table.positives(i) for i, qid in enumerate(table.query_ids)}
        eligible = [qid for qid, found in positives.items() if found]
        selected = select_queries(eligible, self.rate, self.seed)
        selected_in_row_order = sorted(selected, key=table.row_of.__getitem__)
        judged = _judged_relevant(data)
        excluded, needed, queries = {}, {}, {}
        for qid in selected_in_row_order:
            i = table.row_of[qid]
            excluded[qid] = {columns["doc_ids"][i][j] for j in positives[qid]} | judged.get(qid, set())
            needed[qid] = len(positives[qid])
            queries[qid] = columns["query"][i]
        picks = self._draw(queries, excluded, needed, data) if selected else {}

        changes: list[dict[str, Any]] = []
        shortfall: list[str] = []
        for qid in selected_in_row_order:
            drawn = picks.get(qid, [])
            if len(drawn) < needed[qid]:
                shortfall.append(qid)
            if drawn:
                changes.extend(self._swap_row(table, table.row_of[qid], positives[qid], drawn))
        if shortfall:
            logger.warning(
                "%s: %d of %d selected queries had fewer replacement passages than positives; their other positives "
                "stay (see NoiseResult.shortfall_queries)",
                self.kind,
                len(shortfall),
                len(selected),
            )
        return NoiseResult(
            rows=table.to_dataset(),
            changes=changes,
            config=self.config(),
            eligible_queries=len(eligible),
            selected_queries=selected,
            shortfall_queries=shortfall,
        )

    def _swap_row(self, table: _Rows, i: int, positions: list[int], drawn: list[_Pick]) -> list[dict[str, Any]]:
        columns = table.columns
        doc_ids, labels = list(columns["doc_ids"][i]), list(columns["labels"][i])
        teacher = list(columns["teacher_scores"][i])
        sources = list(columns["label_source"][i]) or [""] * len(doc_ids)
        clean_positions: dict[str, list[int]] = {}
        for j, doc_id in enumerate(doc_ids):
            clean_positions.setdefault(doc_id, []).append(j)
        changes, removed = [], []
        for position, pick in zip(positions, drawn):
            # never a positive: positives are excluded from draws; every copy of a listed negative leaves the row
            copies = clean_positions.get(pick.doc_id, [])
            was_negative = copies[0] if copies else None
            changes.append(
                _change(
                    table.query_ids[i],
                    self.kind,
                    position,
                    doc_ids[position],
                    labels[position],
                    new_doc_id=pick.doc_id,
                    new_label=float(labels[position]),
                    rank=pick.rank,
                    score=pick.score,
                    removed_negative_positions=list(copies),
                )
            )
            if teacher:
                if was_negative is not None:
                    teacher[position] = columns["teacher_scores"][i][was_negative]
                else:
                    teacher[position] = pick.score if pick.score is not None else float("nan")
            doc_ids[position] = pick.doc_id
            sources[position] = NOISE_SOURCE
            removed.extend(copies)
        for j in sorted(removed, reverse=True):
            for values in (doc_ids, labels, sources) + ((teacher,) if teacher else ()):
                del values[j]
        columns["doc_ids"][i], columns["labels"][i], columns["label_source"][i] = doc_ids, labels, sources
        columns["teacher_scores"][i] = teacher
        return changes


class SemanticSwapNoise(_PositiveSwap):
    """Semantic-aware false positives: each positive of a fraction ``rate`` of queries becomes a close wrong passage.

    For a selected query, the pool is its top non-relevant candidates under a model: the candidates ranked best first,
    minus the row's positives and (given a :class:`RetrievalCorpus`) the documents judged relevant, keeping ranks
    ``[skip_top, top_k)`` of what is left. ``skip_top`` > 0 skips the very closest ones, which are the likeliest to be
    unlabeled positives. Each positive is replaced by a passage drawn at random from the pool, without replacement
    within the query. A query whose pool is smaller than its number of positives keeps the rest.

    ``model_or_candidates`` is either precomputed candidates (``query_id -> [(doc_id, score), ...]``, e.g. from
    :func:`retrieve_candidates`; one encode then serves every rate and seed) or an encoder, which is used at each
    :meth:`apply` on the selected queries, searching ``index`` when given or else encoding ``apply``'s corpus.
    Apply to training rows only.
    """

    kind = "semantic_swap"

    def __init__(
        self,
        model_or_candidates: Encoder | Candidates,
        rate: float,
        top_k: int = 20,
        skip_top: int = 0,
        seed: int = 0,
        *,
        index: DocumentIndex | None = None,
        batch_size: int = 64,
        bf16: bool = False,
        show_progress_bar: bool = False,
    ):
        super().__init__(rate, seed)
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        if not 0 <= skip_top < top_k:
            raise ValueError(f"need 0 <= skip_top < top_k, got skip_top={skip_top}, top_k={top_k}")
        if isinstance(model_or_candidates, Mapping):
            self.model, self.candidates = None, model_or_candidates
        elif hasattr(model_or_candidates, "encode_queries"):
            self.model, self.candidates = model_or_candidates, None
        else:
            raise TypeError(
                "model_or_candidates must be an encoder (with encode_queries) or a mapping "
                f"query_id -> [(doc_id, score), ...], got {type(model_or_candidates).__name__}"
            )
        self.top_k, self.skip_top = top_k, skip_top
        self.index = index
        self.batch_size, self.bf16, self.show_progress_bar = batch_size, bf16, show_progress_bar

    def config(self) -> dict[str, Any]:
        return {**super().config(), "top_k": self.top_k, "skip_top": self.skip_top}

    def pool(self, ranked: Sequence[tuple[str, float]], excluded: set[str]) -> list[_Pick]:
        """A query's replacement pool from its candidates: non-relevant ranks ``[skip_top, top_k)``, best first."""
        non_relevant: list[tuple[str, float]] = []
        seen = set(excluded)
        for doc_id, score in sorted(((str(d), float(s)) for d, s in ranked), key=lambda item: -item[1]):
            if doc_id not in seen:  # also drops a repeated document
                seen.add(doc_id)
                non_relevant.append((doc_id, score))
        return [_Pick(doc_id, rank, score) for rank, (doc_id, score) in enumerate(non_relevant)][
            self.skip_top : self.top_k
        ]

    def _draw(self, queries, excluded, needed, data) -> dict[str, list[_Pick]]:
        candidates = self.candidates
        if candidates is None:
            corpus = _corpus_of(data)
            if self.index is None and corpus is None:
                raise ValueError("SemanticSwapNoise with a model needs the corpus: apply(rows, data) or index=")
            depth = self.top_k + max(len(docs) for docs in excluded.values())
            candidates = retrieve_candidates(
                self.model,
                queries,
                corpus,
                top_k=depth,
                index=self.index,
                batch_size=self.batch_size,
                bf16=self.bf16,
                show_progress_bar=self.show_progress_bar,
            )
        picks = {}
        for qid in queries:
            pool = self.pool(candidates.get(qid, ()), excluded[qid])
            k = min(needed[qid], len(pool))
            chosen = query_rng(self.seed, qid).choice(len(pool), size=k, replace=False) if k else []
            picks[qid] = [pool[int(c)] for c in chosen]
        return picks


class UniformSwapNoise(_PositiveSwap):
    """Random false positives (the control for :class:`SemanticSwapNoise`): each positive of a fraction ``rate`` of
    queries becomes a passage drawn uniformly from ``corpus_ids``, excluding the query's positives (and, given a
    :class:`RetrievalCorpus`, its judged-relevant documents), without replacement within the query.

    For one seed it selects the same queries as :class:`SemanticSwapNoise`. Apply to training rows only.
    """

    kind = "uniform_swap"

    def __init__(self, corpus_ids: Iterable[str], rate: float, seed: int = 0):
        super().__init__(rate, seed)
        self.corpus_ids = list(dict.fromkeys(corpus_ids))  # a dict of id -> text works too
        if not self.corpus_ids:
            raise ValueError("corpus_ids is empty")
        self._corpus_set = set(self.corpus_ids)

    def _draw(self, queries, excluded, needed, data) -> dict[str, list[_Pick]]:
        picks = {}
        n = len(self.corpus_ids)
        for qid in queries:
            blocked = excluded[qid] & self._corpus_set
            k = min(needed[qid], n - len(blocked))
            rng = query_rng(self.seed, qid)
            chosen: list[_Pick] = []
            while len(chosen) < k:  # rejection sampling: no list of the allowed ids, which may be millions long
                doc_id = self.corpus_ids[int(rng.integers(n))]
                if doc_id not in blocked:
                    blocked.add(doc_id)
                    chosen.append(_Pick(doc_id))
            picks[qid] = chosen
        return picks


# --------------------------------------------------------------------------------------------------------------------
# false negatives


class FalseNegativeInjection:
    """Hide positives among the negatives, as mined data with sparse labels looks.

    Eligible queries have at least ``min_positives`` positives. Of their ``P`` positives, :func:`noise_count`
    (``rate * P`` rounded half up) are moved, chosen globally but never a query's last one: the eligible
    ``(query, positive)`` pairs, sorted, are permuted once with ``default_rng(seed)`` and taken in that order,
    skipping a pair whose query is down to one positive. At most ``P - n_eligible`` can move, so ``rate = 1`` leaves
    each eligible query exactly one positive. A moved positive stays in place with label 0, ``label_source``
    ``"noise"`` and its teacher score. The same seed gives the same rows; a higher rate moves a superset of a lower
    rate's positives. Apply to training rows only.

    ``order="teacher_score"`` moves the positives the teacher scores highest instead of random ones: the pairs are
    taken by their rank within their query (every query's best-scored positive first, then every query's second,
    ...; ties and queries in seeded random order). This is how false negatives arise in mined data — the unlabeled
    relevant passages a miner retrieves are the ones its model scores highest (Thakur et al., 2025, RLHN; Moreira et
    al., 2024, NV-Retriever) — whereas a randomly hidden positive the model already scores low is an easy negative that
    costs a contrastive loss little. Needs a teacher score on every positive of an eligible query.
    """

    kind = "false_negative"
    orders = ("random", "teacher_score")

    def __init__(self, rate: float, min_positives: int = 2, seed: int = 0, order: str = "random"):
        self.rate = check_rate(rate)
        self.seed = _check_seed(seed)
        if isinstance(min_positives, bool) or not isinstance(min_positives, numbers.Integral) or min_positives < 2:
            raise ValueError(f"min_positives must be an integer >= 2 (a query keeps one positive), got {min_positives}")
        self.min_positives = int(min_positives)
        if order not in self.orders:
            raise ValueError(f"order must be one of {self.orders}, got {order!r}")
        self.order = order

    def config(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "rate": self.rate,
            "seed": self.seed,
            "min_positives": self.min_positives,
            "order": self.order,
        }

    def _pair_order(self, table: _Rows, pairs: list[tuple[str, int]]) -> list[int]:
        """Indices into ``pairs`` in the order positives are moved."""
        permutation = np.random.default_rng(self.seed).permutation(len(pairs))
        if self.order == "random":
            return [int(k) for k in permutation]
        draw = np.empty(len(pairs), dtype=np.int64)
        draw[permutation] = np.arange(len(pairs))  # a seeded random tie-break per pair
        rank_in_query: dict[int, int] = {}
        by_query: dict[str, list[int]] = {}
        for k, (qid, _) in enumerate(pairs):
            by_query.setdefault(qid, []).append(k)
        for qid, indices in by_query.items():
            teacher = table.columns["teacher_scores"][table.row_of[qid]] or []
            scores = {k: float(teacher[pairs[k][1]]) if pairs[k][1] < len(teacher) else float("nan") for k in indices}
            missing = [pairs[k][1] for k, score in scores.items() if not np.isfinite(score)]
            if missing:
                raise ValueError(
                    f"false_negative order='teacher_score': query {qid!r} has no teacher score for its positive at "
                    f"position {missing[0]} (field 'teacher_scores'); score the rows first (e.g. mine them) or use "
                    "order='random'"
                )
            ranked = sorted(indices, key=lambda k: (-scores[k], draw[k]))
            rank_in_query.update((k, rank) for rank, k in enumerate(ranked))
        return sorted(range(len(pairs)), key=lambda k: (rank_in_query[k], draw[k]))

    def __call__(self, rows: datasets.Dataset, data: RetrievalCorpus | Mapping[str, str] | None = None) -> NoiseResult:
        return self.apply(rows, data)

    def apply(self, rows: datasets.Dataset, data: RetrievalCorpus | Mapping[str, str] | None = None) -> NoiseResult:
        """Move positives of the eligible training queries into the negatives (``data`` is not needed)."""
        table = _Rows(rows)
        columns = table.columns
        positives = {qid: table.positives(i) for i, qid in enumerate(table.query_ids)}
        eligible = sorted(qid for qid, found in positives.items() if len(found) >= self.min_positives)
        pairs = [(qid, position) for qid in eligible for position in positives[qid]]
        target = noise_count(self.rate, len(pairs))
        remaining = {qid: len(positives[qid]) for qid in eligible}
        moved: list[tuple[str, int]] = []
        for k in self._pair_order(table, pairs):
            if len(moved) >= target:
                break
            qid, position = pairs[k]
            if remaining[qid] > 1:
                remaining[qid] -= 1
                moved.append((qid, position))
        if len(moved) < target:
            logger.warning(
                "false_negative: rate %.3f asks for %d of %d positives, but only %d can move (each query keeps one)",
                self.rate,
                target,
                len(pairs),
                len(moved),
            )

        changes = []
        for qid, position in sorted(moved, key=lambda pair: (table.row_of[pair[0]], pair[1])):
            i = table.row_of[qid]
            labels = columns["labels"][i]
            sources = columns["label_source"][i] or [""] * len(labels)
            changes.append(
                _change(qid, self.kind, position, columns["doc_ids"][i][position], labels[position], new_label=0.0)
            )
            labels[position] = 0.0
            sources[position] = NOISE_SOURCE
            columns["label_source"][i] = sources
        return NoiseResult(
            rows=table.to_dataset(),
            changes=changes,
            config=self.config(),
            eligible_queries=len(eligible),
            selected_queries=list(dict.fromkeys(qid for qid, _ in moved)),
        )


NOISE_KINDS = {
    SemanticSwapNoise.kind: SemanticSwapNoise,
    UniformSwapNoise.kind: UniformSwapNoise,
    FalseNegativeInjection.kind: FalseNegativeInjection,
}
"""Noise generators by the ``kind`` their change records carry."""
