"""Relabeling strategies: what a row becomes once its negatives are judged (RLHN, arXiv 2505.16967; ARHN,
arXiv 2604.11092).

Every strategy is a ``datasets.map`` transform (``batched=False``) over canonical rows that carry one mark per
candidate in a column (``judgments`` by default): a :class:`~hf_robust_ir.relabel.base.Verdict` value
(``"relevant"``, ``"not_relevant"``, ``"no_verdict"``) for the judge strategies, ``"R"`` / ``"F"`` for ARHN, ``None``
where the candidate was not judged. A candidate is *flagged* when it is one of the row's negatives and its mark is one
the strategy acts on:

- ``rlhn``: flagged negatives become positives (label 1, source ``"relabeled:<judge>"``);
- ``hn_remove``: flagged negatives are dropped from the row and listed in its ``excluded_doc_ids``
  (:data:`~hf_robust_ir.data.schema.EXCLUDED_COLUMN`), so that no later step uses them as the query's negatives
  again: not the collator's in-batch negatives, nor a hard-negative refresh or re-mining;
- ``remove``: a query with any flagged negative is dropped;
- ``threshold``: a query with more than ``max_flagged`` flagged negatives is dropped, the others are unchanged (it
  needs ``max_flagged``);
- ``arhn_r``: candidates the list-wise ranking put above the original positive (``"R"``) become positives;
- ``arhn_f``: candidates below it that hold an answer span (``"F"``) leave the negatives (dropped and excluded, as
  in ``hn_remove``);
- ``arhn_rf``: both.

``max_flagged`` composes the threshold with any strategy (RLHN drops queries with more than 8 flagged negatives).
Labeled positives are never judged or changed. A document listed in one row both as a positive and as a negative is
a positive of the row (the highest label wins, as in the training collator): its negative copy is no negative, never
judged or flagged, and stays in the row as it is (:func:`negative_indices`). ``no_verdict`` and ``None`` never change
anything, and candidates that are not relabeled keep their ``label_source`` (``"qrels"`` for positives and
``"mined"`` for negatives when the row has none, as :func:`~hf_robust_ir.mining.mine_hard_negatives` writes). A
transform returns the new row plus a ``keep`` column; :func:`apply_strategy` attaches the marks, maps, and filters on
``keep``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import datasets

from ..data.schema import EXCLUDED_COLUMN, EXCLUDED_FEATURE, excluded_doc_ids
from .base import Judgment, Verdict

JUDGMENTS_COLUMN = "judgments"
KEEP_COLUMN = "keep"
RELEVANT = Verdict.RELEVANT.value
ARHN_RELEVANT = "R"  # ranked above the original positive
ARHN_FALSE_NEGATIVE = "F"  # ranked below it, but holds an answer span

Mark = str | None


def relabeled_source(judge: str) -> str:
    """The ``label_source`` of a candidate a judge relabeled."""
    return f"relabeled:{judge}"


def default_sources(labels: Sequence[float]) -> list[str]:
    """Provenance for a row without ``label_source``: ``"qrels"`` for positives, ``"mined"`` for negatives."""
    return ["qrels" if label > 0 else "mined" for label in labels]


def negative_indices(doc_ids: Sequence[str], labels: Sequence[float]) -> list[int]:
    """Positions of a row's negatives: label ``<= 0`` and the document not listed as a positive elsewhere in the row.

    A document listed with several labels takes the highest, as the training collator does: one listed both with a
    label > 0 and with 0 is a positive, and its 0 copy is no negative to judge (against itself) or to relabel."""
    positives = {doc_id for doc_id, label in zip(doc_ids, labels) if label > 0}
    return [j for j, (doc_id, label) in enumerate(zip(doc_ids, labels)) if label <= 0 and doc_id not in positives]


def as_mark(value: Judgment | Verdict | Mapping[str, Any] | str | None) -> Mark:
    """A judgment (object, verdict, ``to_dict()`` or ``asdict()`` form, string) as the mark stored in the judgments
    column."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, Judgment):
        return value.verdict.value
    if isinstance(value, Verdict):
        return value.value
    verdict = value["verdict"]
    return verdict.value if isinstance(verdict, Verdict) else str(verdict)


@dataclass(frozen=True)
class Strategy:
    """A row transform: ``promote`` marks turn negatives into positives, ``drop`` marks remove candidates,
    ``drop_query`` removes the query when anything is flagged; ``flag_marks`` are the marks counted as flags
    (default: ``promote | drop``). ``arhn`` strategies read ARHN marks, the others judge verdicts."""

    name: str
    promote: frozenset[str] = frozenset()
    drop: frozenset[str] = frozenset()
    drop_query: bool = False
    flag_marks: frozenset[str] = frozenset()
    arhn: bool = False

    @property
    def flagging(self) -> frozenset[str]:
        return self.flag_marks or (self.promote | self.drop)

    @property
    def needs_max_flagged(self) -> bool:
        """Whether the strategy acts only through ``max_flagged`` (``threshold``): without it no row changes."""
        return not (self.promote or self.drop or self.drop_query)

    def check_max_flagged(self, max_flagged: int | None) -> None:
        """Refuse a strategy that would change nothing for want of ``max_flagged``."""
        if max_flagged is None and self.needs_max_flagged:
            raise ValueError(
                f"strategy {self.name!r} drops only queries with more than max_flagged flagged negatives: give "
                "max_flagged (without it every row is kept unchanged)"
            )

    def flagged(self, row: Mapping[str, Any], column: str = JUDGMENTS_COLUMN) -> list[int]:
        """Indices of the row's negatives (:func:`negative_indices`) whose mark this strategy acts on."""
        marks = row.get(column) or []
        return [
            j
            for j in negative_indices(row["doc_ids"], row["labels"])
            if j < len(marks) and marks[j] is not None and marks[j] in self.flagging
        ]

    def __call__(
        self,
        row: Mapping[str, Any],
        judge: str = "judge",
        column: str = JUDGMENTS_COLUMN,
        max_flagged: int | None = None,
    ) -> dict[str, Any]:
        """The new row (canonical columns + ``keep``) for one row carrying its marks in ``column``; a strategy that
        drops candidates also returns the row's :data:`~hf_robust_ir.data.schema.EXCLUDED_COLUMN` with them added."""
        doc_ids, labels = list(row["doc_ids"]), [float(x) for x in row["labels"]]
        teacher = list(row.get("teacher_scores") or [])
        given_sources = list(row.get("label_source") or [])
        marks = list(row.get(column) or [])
        for name, values in (("labels", labels), ("teacher_scores", teacher), ("label_source", given_sources)):
            if (name == "labels" or values) and len(values) != len(doc_ids):
                raise ValueError(
                    f"query {row['query_id']!r}: {len(values)} {name} values for {len(doc_ids)} candidates"
                )
        if marks and len(marks) != len(doc_ids):
            raise ValueError(f"query {row['query_id']!r}: {len(marks)} marks for {len(doc_ids)} candidates")
        sources = given_sources or default_sources(labels)
        flagged = self.flagged(row, column)
        negatives = set(negative_indices(doc_ids, labels))
        excluded = excluded_doc_ids(row)
        unchanged = {"doc_ids": doc_ids, "labels": labels, "teacher_scores": teacher, "label_source": sources}
        if self.drop:
            unchanged[EXCLUDED_COLUMN] = excluded
        if (self.drop_query and flagged) or (max_flagged is not None and len(flagged) > max_flagged):
            return {**unchanged, KEEP_COLUMN: False}
        out: dict[str, list] = {"doc_ids": [], "labels": [], "teacher_scores": [], "label_source": []}
        dropped: list[str] = []
        for j, doc_id in enumerate(doc_ids):
            mark = marks[j] if marks else None
            is_flagged = j in negatives and mark is not None
            if is_flagged and mark in self.drop:
                dropped.append(doc_id)
                continue
            if is_flagged and mark in self.promote:
                label, source = 1.0, relabeled_source(judge)
            else:
                label, source = labels[j], sources[j]
            out["doc_ids"].append(doc_id)
            out["labels"].append(label)
            out["label_source"].append(source)
            if teacher:
                out["teacher_scores"].append(teacher[j])
        if self.drop:
            out[EXCLUDED_COLUMN] = excluded + [d for d in dict.fromkeys(dropped) if d not in excluded]
        return {**out, KEEP_COLUMN: True}


_RELEVANT = frozenset({RELEVANT})
rlhn = Strategy("rlhn", promote=_RELEVANT)
hn_remove = Strategy("hn_remove", drop=_RELEVANT)
remove = Strategy("remove", drop_query=True, flag_marks=_RELEVANT)
threshold = Strategy("threshold", flag_marks=_RELEVANT)
arhn_r = Strategy("arhn_r", promote=frozenset({ARHN_RELEVANT}), arhn=True)
arhn_f = Strategy("arhn_f", drop=frozenset({ARHN_FALSE_NEGATIVE}), arhn=True)
arhn_rf = Strategy("arhn_rf", promote=frozenset({ARHN_RELEVANT}), drop=frozenset({ARHN_FALSE_NEGATIVE}), arhn=True)

STRATEGIES: dict[str, Strategy] = {s.name: s for s in (rlhn, hn_remove, remove, threshold, arhn_r, arhn_f, arhn_rf)}


def get_strategy(name: str | Strategy) -> Strategy:
    """A strategy by name (see :data:`STRATEGIES`)."""
    if isinstance(name, Strategy):
        return name
    if name not in STRATEGIES:
        raise ValueError(f"unknown relabeling strategy {name!r}; expected one of {sorted(STRATEGIES)}")
    return STRATEGIES[name]


def attach_judgments(
    dataset: datasets.Dataset, judgments: Sequence[Sequence[Any]], column: str = JUDGMENTS_COLUMN
) -> datasets.Dataset:
    """``dataset`` plus a column of marks (:func:`as_mark` of each judgment), one list per row."""
    if len(judgments) != len(dataset):
        raise ValueError(f"{len(judgments)} judgment lists for {len(dataset)} rows")
    marks = [[as_mark(value) for value in row] for row in judgments]
    fingerprint = hashlib.sha256(
        json.dumps([dataset._fingerprint, column, marks], separators=(",", ":")).encode("utf-8")
    ).hexdigest()[:32]
    if column in dataset.column_names:
        dataset = dataset.remove_columns(column)
    feature = datasets.Sequence(datasets.Value("string"))
    return dataset.add_column(column, marks, feature=feature, new_fingerprint=fingerprint)


def apply_strategy(
    dataset: datasets.Dataset,
    judgments: Sequence[Sequence[Any]] | None,
    strategy: str | Strategy,
    judge: str = "judge",
    max_flagged: int | None = None,
    column: str = JUDGMENTS_COLUMN,
) -> datasets.Dataset:
    """Apply a strategy to every row: attach ``judgments`` (one list per row, one entry per candidate; ``None``
    when ``dataset`` already has the ``column``), ``map`` the transform, drop the rows it does not keep and the
    helper columns. Other columns pass through unchanged, except :data:`~hf_robust_ir.data.schema.EXCLUDED_COLUMN`,
    which a strategy that drops candidates adds them to (and creates when the rows have none)."""
    strategy = get_strategy(strategy)
    strategy.check_max_flagged(max_flagged)
    if judgments is not None:
        dataset = attach_judgments(dataset, judgments, column)
    elif column not in dataset.column_names:
        raise ValueError(f"no judgments given and no {column!r} column in the dataset")
    features = dataset.features.copy()
    features[KEEP_COLUMN] = datasets.Value("bool")
    for name, feature in (
        ("labels", datasets.Sequence(datasets.Value("float32"))),
        ("teacher_scores", datasets.Sequence(datasets.Value("float32"))),
        ("label_source", datasets.Sequence(datasets.Value("string"))),
    ):
        features[name] = features.get(name, feature)
    if strategy.drop:
        features[EXCLUDED_COLUMN] = features.get(EXCLUDED_COLUMN, EXCLUDED_FEATURE)
    if len(dataset) == 0:  # ``map`` does not call the transform on no rows: give the columns it would have added
        kept_features = datasets.Features({k: v for k, v in features.items() if k not in (KEEP_COLUMN, column)})
        return datasets.Dataset.from_dict({name: [] for name in kept_features}, features=kept_features)
    mapped = dataset.map(
        strategy,
        fn_kwargs={"judge": judge, "column": column, "max_flagged": max_flagged},
        features=features,
        keep_in_memory=True,
        load_from_cache_file=False,
        desc=f"strategy {strategy.name}",
    )
    kept = mapped.filter(lambda keep: keep, input_columns=KEEP_COLUMN, keep_in_memory=True)
    return kept.remove_columns([KEEP_COLUMN, column])
