"""The relabeling run: judge every row's negatives once (through the cache), then apply each strategy.

Rows are visited in dataset order, ``batch_size`` at a time. For each batch the cache is read first; the judge is
called (one :meth:`~hf_robust_ir.relabel.base.Judge.judge_many`) only for the rows that still have uncached pairs,
and its verdicts are committed to the cache before the next batch. A pointwise judge receives only the uncached
candidates; a list-wise judge (``judge.listwise = True``, one whose verdict on a candidate depends on the others)
always receives the whole candidate list, its verdicts are cached under the list's key (:func:`~.cache.list_key`),
and its new verdicts replace the cached ones of that list, so the labels depend neither on what was cached before nor
on the lists of other rows of the same query. A no verdict (a failed request, an unusable answer) is not stored: the
next run asks again. So a run that is killed and started again with the same cache judges no pair twice (except the
batch in flight when it was killed, and the pairs without a verdict) and writes the same datasets as an uninterrupted
run.

ARHN strategies need per-candidate marks ``"R"`` / ``"F"`` / ``None`` from a judge with
``arhn_labels(query, positives, candidates)``; they are cached, by list key, as judgments of the judge key +
``":arhn"``. A judge that also has ``arhn_decisions`` (same arguments, ``(mark, decided)`` per candidate) says which
``None`` marks are undecided; those are not stored either.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
from tqdm.auto import tqdm

from ..data.schema import DataFormatError
from .base import Judge, Judgment, Verdict
from .cache import JudgmentCache, PairKey, doc_key, list_key, query_key
from .strategies import RELEVANT, Mark, apply_strategy, default_sources, get_strategy, negative_indices

logger = logging.getLogger(__name__)

ARHN_KEY_SUFFIX = ":arhn"
SUMMARY_NAME = "summary.json"  # next to the relabeled rows: the judge, its counts, the strategies


def mark_to_judgment(mark: Mark, decided: bool = True) -> Judgment:
    """An ARHN mark as a cacheable judgment (the mark rides in the rationale); an undecided one is a no verdict."""
    verdict = Verdict.RELEVANT if mark else Verdict.NOT_RELEVANT if decided else Verdict.NO_VERDICT
    return Judgment(verdict, None, f"arhn:{mark or ''}")


def judgment_to_mark(judgment: Judgment) -> Mark:
    return judgment.rationale.removeprefix("arhn:") or None


@dataclass
class RelabelResult:
    """One relabeled dataset per strategy, the per-candidate marks and a summary of the run."""

    datasets: dict[str, datasets.Dataset]
    summary: dict[str, Any]
    judgments: list[list[Mark]] = field(default_factory=list, repr=False)
    marks: list[list[Mark]] = field(default_factory=list, repr=False)

    def save(self, output_dir: str | Path) -> None:
        """Write ``<output_dir>/<strategy>/`` (``save_to_disk``), ``<output_dir>/<strategy>.jsonl`` and
        ``<output_dir>/summary.json``."""
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        for name, dataset in self.datasets.items():
            dataset.save_to_disk(str(out / name))
            write_jsonl(dataset, out / f"{name}.jsonl")
        (out / SUMMARY_NAME).write_text(json.dumps(self.summary, indent=2) + "\n", encoding="utf-8")


def write_jsonl(dataset: datasets.Dataset, path: str | Path) -> None:
    """One JSON object per row, columns in dataset order (deterministic bytes for identical rows). A missing score
    (NaN) is written as ``null``, as ``datasets`` writes it: ``NaN`` is not JSON, and strict readers refuse it."""
    with open(path, "w", encoding="utf-8") as f:
        for row in dataset.with_format(None):
            f.write(json.dumps(_nan_as_null(row), ensure_ascii=False, allow_nan=False) + "\n")


def _nan_as_null(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, list):
        return [_nan_as_null(v) for v in value]
    if isinstance(value, dict):
        return {k: _nan_as_null(v) for k, v in value.items()}
    return value


@dataclass
class _Row:
    index: int
    query_id: str
    query: str
    positives: list[str]  # texts
    candidates: list[int]  # indices into doc_ids of the judged negatives
    texts: list[str]  # their texts
    query_key: str
    doc_keys: list[str]
    list_key: str  # the query key of a list-wise judge (:func:`~.cache.list_key`)

    def key(self, listwise: bool) -> str:
        return self.list_key if listwise else self.query_key


def _prepare(index: int, row: Mapping[str, Any], corpus: Mapping[str, str], max_candidates: int | None) -> _Row:
    doc_ids, labels = row["doc_ids"], row["labels"]
    for name in ("labels", "teacher_scores", "label_source"):  # the others may be empty
        values = row.get(name) or []
        if (name == "labels" or values) and len(values) != len(doc_ids):
            raise DataFormatError("rows", index + 1, name, f"{len(values)} values for {len(doc_ids)} doc_ids")
    missing = [d for d in doc_ids if d not in corpus]
    if missing:
        raise DataFormatError("rows", index + 1, "doc_ids", f"ids not in the corpus: {missing[:5]}")
    positives = [(d, corpus[d]) for d, y in zip(doc_ids, labels) if y > 0]
    candidates = negative_indices(doc_ids, labels)[:max_candidates]  # not a positive's copy listed as a negative
    texts = [corpus[doc_ids[j]] for j in candidates]
    key = query_key(row["query"], positives)
    doc_keys = [doc_key(doc_ids[j], text) for j, text in zip(candidates, texts)]
    return _Row(
        index,
        row["query_id"],
        row["query"],
        [text for _, text in positives],
        candidates,
        texts,
        key,
        doc_keys,
        list_key(key, doc_keys),
    )


class _Counts:
    """``cache_hits``: candidates answered without the judge (cached, or a pair the batch lists again);
    ``judged_pairs``: candidates sent to the judge; ``judge_calls``: calls to it."""

    def __init__(self):
        self.cache_hits = self.judged_pairs = self.judge_calls = 0


def _judge_batch(
    batch: list[_Row], judge: Judge, judge_key: str, cache: JudgmentCache, counts: _Counts, listwise: bool
) -> list[list[Judgment]]:
    """Judgments for every candidate of the batch's rows: cached, or from one ``judge_many`` call (then cached). A
    pointwise judge is asked about each uncached pair once, however often the batch lists it."""
    cached = _cached_verdicts(cache, judge_key, batch, listwise)
    requests, owners, asked = [], [], set()
    for r in batch:
        todo = [k for k, dk in enumerate(r.doc_keys) if (r.key(listwise), dk) not in cached]
        if todo and listwise:
            todo = list(range(len(r.doc_keys)))
        else:
            todo, uncached = [], todo
            for k in uncached:
                if (r.query_key, r.doc_keys[k]) not in asked:
                    asked.add((r.query_key, r.doc_keys[k]))
                    todo.append(k)
        counts.cache_hits += len(r.doc_keys) - len(todo)
        if todo:
            requests.append((r.query, r.positives, [r.texts[k] for k in todo]))
            owners.append((r, todo))
    if requests:
        answers = judge.judge_many(requests)
        counts.judge_calls += 1
        if len(answers) != len(requests):
            raise ValueError(f"judge {judge.name!r} returned {len(answers)} judgment lists for {len(requests)} rows")
        store = []
        for (r, todo), judgments in zip(owners, answers):
            if len(judgments) != len(todo):
                raise ValueError(
                    f"judge {judge.name!r} returned {len(judgments)} judgments for {len(todo)} candidates of query "
                    f"{r.query_id!r}"
                )
            counts.judged_pairs += len(todo)
            fresh = [(r.key(listwise), r.doc_keys[k], j) for k, j in zip(todo, judgments)]
            store.extend(_merge(cached, fresh, listwise))
        cache.put_many(judge_key, store, replace=listwise)
    return [[cached[(r.key(listwise), dk)] for dk in r.doc_keys] for r in batch]


def _cached_verdicts(cache: JudgmentCache, key: str, batch: list[_Row], listwise: bool) -> dict[PairKey, Judgment]:
    """The cached verdicts of the batch's pairs (by list key for a list-wise judge); a no verdict stored by an earlier
    version counts as not cached."""
    found = cache.get_many(key, [(r.key(listwise), dk) for r in batch for dk in r.doc_keys])
    return {pair: judgment for pair, judgment in found.items() if judgment.verdict is not Verdict.NO_VERDICT}


def _merge(
    cached: dict[PairKey, Judgment], fresh: list[tuple[str, str, Judgment]], replace: bool
) -> list[tuple[str, str, Judgment]]:
    """Add ``fresh`` judgments to ``cached``; returns those to store. A no verdict is not stored (the next run asks
    again) and never displaces a cached verdict; with ``replace`` (a list-wise judge, which judged the whole list
    again) the fresh verdicts displace the cached ones."""
    store = []
    for qk, dk, judgment in fresh:
        if judgment.verdict is Verdict.NO_VERDICT:
            cached.setdefault((qk, dk), judgment)
            continue
        store.append((qk, dk, judgment))
        if replace:
            cached[(qk, dk)] = judgment
        else:
            cached.setdefault((qk, dk), judgment)
    return store


def _mark_batch(
    batch: list[_Row], judge: Any, mark_key: str, cache: JudgmentCache, counts: _Counts
) -> list[list[Judgment]]:
    """ARHN marks (as judgments) for every candidate: cached, or one ``arhn_labels`` call per uncached row (a whole
    row: ARHN ranks a query's candidates together)."""
    cached = _cached_verdicts(cache, mark_key, batch, listwise=True)
    decisions = getattr(judge, "arhn_decisions", None)
    for r in batch:
        if all((r.list_key, dk) in cached for dk in r.doc_keys):
            counts.cache_hits += len(r.doc_keys)
            continue
        if callable(decisions):
            marks = decisions(r.query, r.positives, r.texts)
        else:
            marks = [(mark, True) for mark in judge.arhn_labels(r.query, r.positives, r.texts)]
        counts.judge_calls += 1
        counts.judged_pairs += len(r.texts)
        if len(marks) != len(r.texts):
            raise ValueError(f"arhn_labels returned {len(marks)} marks for {len(r.texts)} candidates")
        fresh = [(r.list_key, dk, mark_to_judgment(m, decided)) for dk, (m, decided) in zip(r.doc_keys, marks)]
        cache.put_many(mark_key, _merge(cached, fresh, replace=True), replace=True)
    return [[cached[(r.list_key, dk)] for dk in r.doc_keys] for r in batch]


def _spread(r: _Row, size: int, values: Sequence[Mark]) -> list[Mark]:
    """Per-candidate marks over the whole row: ``None`` for positives and unjudged candidates."""
    full: list[Mark] = [None] * size
    for j, value in zip(r.candidates, values):
        full[j] = value
    return full


def relabel(
    rows: datasets.Dataset,
    corpus: Mapping[str, str],
    judge: Judge,
    strategies: Sequence[str],
    cache: JudgmentCache,
    batch_size: int = 32,
    max_candidates: int | None = None,
    max_flagged: int | None = None,
    show_progress_bar: bool = True,
) -> RelabelResult:
    """Judge the negatives of every row (cache first), then apply each strategy (:mod:`.strategies`).

    Args:
        rows: canonical rows; ``doc_ids`` point into ``corpus``.
        corpus: document id -> text.
        judge: any :class:`~hf_robust_ir.relabel.base.Judge`; ARHN strategies need ``arhn_labels`` too.
        strategies: names from :data:`~hf_robust_ir.relabel.strategies.STRATEGIES`.
        cache: the judgment cache; a rerun with the same cache calls the judge for nothing already cached.
        batch_size: rows per ``judge_many`` call and per cache transaction.
        max_candidates: judge at most the first N negatives of each row (the rest keep their labels).
        max_flagged: drop queries with more flagged negatives than this, under every strategy (RLHN: 8).
    """
    chosen = [get_strategy(name) for name in strategies]
    if not chosen:
        raise ValueError("no relabeling strategy given")
    settings = {"batch_size": (batch_size, 1), "max_candidates": (max_candidates, 1), "max_flagged": (max_flagged, 0)}
    for name, (value, least) in settings.items():
        if value is not None and value < least:
            raise ValueError(f"{name} must be >= {least}, got {value}")
    for strategy in chosen:
        strategy.check_max_flagged(max_flagged)
    needs_verdicts = any(not s.arhn for s in chosen)
    needs_marks = any(s.arhn for s in chosen)
    if needs_marks and not callable(getattr(judge, "arhn_labels", None)):
        raise ValueError(f"ARHN strategies need a judge with arhn_labels(); {type(judge).__name__} has none")
    judge_key = judge.cache_key()
    listwise = bool(getattr(judge, "listwise", False))
    counts = _Counts()
    verdicts: list[list[Mark]] = []
    marks: list[list[Mark]] = []
    flags_by_source: Counter[str] = Counter()
    verdict_counts: Counter[str] = Counter()
    mark_counts: Counter[str] = Counter()
    candidates = 0
    wanted = ["query_id", "query", "doc_ids", "labels", "teacher_scores", "label_source"]
    table = rows.with_format(None).select_columns([c for c in wanted if c in rows.column_names])
    index = 0
    desc = f"Relabeling with {judge.name}"
    with tqdm(total=len(rows), desc=desc, unit="query", disable=not show_progress_bar) as bar:
        for columns in table.iter(batch_size=batch_size):
            raw = [{k: columns[k][i] for k in columns} for i in range(len(columns["query_id"]))]
            batch = [_prepare(index + i, row, corpus, max_candidates) for i, row in enumerate(raw)]
            index += len(batch)
            batch_verdicts = _judge_batch(batch, judge, judge_key, cache, counts, listwise) if needs_verdicts else None
            batch_marks = _mark_batch(batch, judge, judge_key + ARHN_KEY_SUFFIX, cache, counts) if needs_marks else None
            for i, (r, row) in enumerate(zip(batch, raw)):
                candidates += len(r.candidates)
                sources = row.get("label_source") or default_sources(row["labels"])
                size = len(row["doc_ids"])
                if batch_verdicts is not None:
                    values = [j.verdict.value for j in batch_verdicts[i]]
                    verdict_counts.update(values)
                    flags_by_source.update(sources[c] for c, v in zip(r.candidates, values) if v == RELEVANT)
                    verdicts.append(_spread(r, size, values))
                if batch_marks is not None:
                    values = [judgment_to_mark(j) for j in batch_marks[i]]
                    mark_counts.update(v for v in values if v)
                    marks.append(_spread(r, size, values))
            bar.update(len(batch))

    out: dict[str, datasets.Dataset] = {}
    per_strategy: dict[str, dict[str, int]] = {}
    for strategy in chosen:
        judged = marks if strategy.arhn else verdicts
        out[strategy.name] = apply_strategy(rows, judged, strategy, judge=judge.name, max_flagged=max_flagged)
        per_strategy[strategy.name] = _strategy_summary(rows, judged, strategy, max_flagged, out[strategy.name])

    summary = {
        "judge": {"name": judge.name, "cache_key": judge_key, "config": judge.config()},
        "queries": len(rows),
        "candidates_judged": candidates,
        "cache_hits": counts.cache_hits,
        "judged_pairs": counts.judged_pairs,
        "judge_calls": counts.judge_calls,
        "max_candidates": max_candidates,
        "max_flagged": max_flagged,
        "verdicts": dict(sorted(verdict_counts.items())),
        "flags_per_judge": {judge.name: verdict_counts.get(RELEVANT, 0)},
        "flags_per_label_source": dict(sorted(flags_by_source.items())),
        "strategies": per_strategy,
    }
    if needs_marks:
        summary["arhn_marks"] = dict(sorted(mark_counts.items()))
    logger.info(
        "Relabeled %d queries: %d candidates, %d cache hits, %d pairs judged in %d calls",
        len(rows), candidates, counts.cache_hits, counts.judged_pairs, counts.judge_calls,
    )  # fmt: skip
    return RelabelResult(out, summary, verdicts, marks)


def _strategy_summary(
    rows: datasets.Dataset,
    judged: list[list[Mark]],
    strategy: Any,
    max_flagged: int | None,
    result: datasets.Dataset,
) -> dict[str, int]:
    flagged = queries_flagged = labels_changed = removed = dropped = 0
    table = rows.with_format(None)
    for doc_ids, labels, row_marks in zip(table["doc_ids"], table["labels"], judged):
        hits = strategy.flagged({"doc_ids": doc_ids, "labels": labels, "judgments": row_marks})
        flagged += len(hits)
        queries_flagged += bool(hits)
        if (strategy.drop_query and hits) or (max_flagged is not None and len(hits) > max_flagged):
            dropped += 1
            continue
        labels_changed += sum(row_marks[j] in strategy.promote for j in hits)
        removed += sum(row_marks[j] in strategy.drop for j in hits)
    return {
        "flagged": flagged,
        "queries_flagged": queries_flagged,
        "queries_dropped": dropped,
        "labels_changed": labels_changed,
        "candidates_removed": removed,
        "rows": len(result),
    }
