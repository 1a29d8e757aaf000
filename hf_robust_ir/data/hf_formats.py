"""Convert Hugging Face datasets in the common retrieval-training shapes into canonical rows plus a corpus.

Shapes:

- **sentence-transformers**: text columns ``anchor`` (or ``query``, or the first column), ``positive`` (or the second
  column), then negatives (``negative``, ``negative_1`` .. ``negative_n``, or the remaining columns).
- **Tevatron**: ``query_id``, ``query``, ``positive_passages``, ``negative_passages`` (lists of
  ``{docid, title, text}``).
- **FlagEmbedding**: ``query``, ``pos``, ``neg`` (lists of texts), optional ``pos_scores`` / ``neg_scores`` (teacher
  scores). Its ``prompt`` and ``type`` columns are ignored: instructions belong to the model's configuration.

Text-only shapes get content ids (:func:`content_id`), so one passage has one id wherever it appears. Rows that share a
query (same text, or same Tevatron ``query_id``) are merged into one canonical row, candidates in first-appearance order
with positives first; a document that is a positive of a query is never kept as a negative of the same query. A query
with no passage on any of its rows is an error, as a canonical row without doc ids is.

Errors are :class:`DataFormatError` naming the source (the file path when loaded from a file), ``line`` = row index + 1,
and the column. For a JSON lines file the line is the file's: the loader skips blank lines, so the converters take
``blank_lines``, the number of rows above each blank line (:func:`load_training_data` passes them).
"""

from __future__ import annotations

import codecs
import hashlib
import json
import logging
import math
from bisect import bisect_right
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets

from .beir import load_beir, rows_from_qrels
from .schema import (
    EXCLUDED_COLUMN,
    EXCLUDED_FEATURE,
    ROW_FEATURES,
    DataFormatError,
    TrainingData,
    check_candidate_lists,
    document_text,
)

logger = logging.getLogger(__name__)

FORMATS = ("auto", "sentence-transformers", "tevatron", "flagembedding", "canonical", "beir")
EXPECTED_SHAPES = (
    "canonical (query_id, query, doc_ids, labels[, teacher_scores, label_source]; needs a corpus), "
    "tevatron (query_id, query, positive_passages[, negative_passages]), "
    "flagembedding (query, pos[, neg, pos_scores, neg_scores]), "
    "sentence-transformers (anchor, positive[, negative | negative_1..negative_n], all text columns)"
)
LABEL_SOURCE = "dataset"


def content_id(text: str) -> str:
    """A stable id for a text: ``"sha1:"`` + the first 16 hex digits of its SHA-1. Identical texts share one id."""
    return "sha1:" + hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def _source_name(ds: datasets.Dataset, source: str | None) -> str:
    if source:
        return source
    return getattr(ds.info, "dataset_name", None) or "dataset"


def _require(ds: datasets.Dataset, source: str, *columns: str) -> None:
    for column in columns:
        if column not in ds.column_names:
            raise DataFormatError(source, None, column, f"missing column; columns found: {ds.column_names}")


def _iter_rows(
    ds: datasets.Dataset, columns: list[str], blank_lines: Sequence[int] = (), batch_size: int = 1000
) -> Iterator[tuple[int, dict]]:
    """Yield ``(line - 1, {column: python value})``, reading the dataset in Arrow batches: ``line`` is the row index
    + 1, moved past the blank lines of the file the rows were read from (see :func:`_blank_lines`)."""
    ds = ds.with_format(None).select_columns(columns)
    row = 0
    for batch in ds.iter(batch_size=batch_size):
        for j in range(len(batch[columns[0]])):
            yield row + bisect_right(blank_lines, row), {c: batch[c][j] for c in columns}
            row += 1


def _text(value: Any, source: str, row: int, field: str, what: str = "text") -> str:
    if not isinstance(value, str):
        raise DataFormatError(source, row + 1, field, f"{what} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise DataFormatError(source, row + 1, field, f"empty {what}")
    return value


def _list(value: Any, source: str, row: int, field: str) -> list:
    if not isinstance(value, list):
        raise DataFormatError(source, row + 1, field, f"must be a list, got {type(value).__name__}")
    return value


def _scores(value: Any, expected: int, source: str, row: int, field: str) -> list[float]:
    values = _list([] if value is None else value, source, row, field)
    if len(values) != expected:
        raise DataFormatError(source, row + 1, field, f"{len(values)} scores for {expected} passages")
    for position, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise DataFormatError(source, row + 1, field, f"scores must be numbers, got {type(v).__name__}")
        if math.isinf(v):  # NaN is "no teacher score", as in canonical rows
            problem = f"scores must be finite or NaN (none), got {v!r} at position {position}"
            raise DataFormatError(source, row + 1, field, problem)
    return [float(v) for v in values]


class _RowBuilder:
    """Accumulates candidates per query, merging rows of the same query, and the corpus they point into.
    ``positives_field`` is the column named when a query ends up with no passage at all."""

    def __init__(self, source: str, with_scores: bool, positives_field: str):
        self.source, self.with_scores, self.positives_field = source, with_scores, positives_field
        self.corpus: dict[str, str] = {}
        self._doc_row: dict[str, int] = {}
        self._queries: dict[str, tuple[str, int]] = {}  # query_id -> (text, first row)
        self._pos: dict[str, dict[str, float | None]] = {}  # query_id -> {doc_id: score}
        self._neg: dict[str, dict[str, float | None]] = {}
        self.conflicts = 0

    def document(self, doc_id: str, text: str, row: int, field: str) -> str:
        known = self.corpus.get(doc_id)
        if known is None:
            self.corpus[doc_id] = text
            self._doc_row[doc_id] = row
        elif known != text:
            raise DataFormatError(
                self.source,
                row + 1,
                field,
                f"document {doc_id!r} has a different text than on line {self._doc_row[doc_id] + 1}",
            )
        return doc_id

    def query(self, query_id: str, text: str, row: int, field: str) -> None:
        known = self._queries.get(query_id)
        if known is None:
            self._queries[query_id] = (text, row)
            self._pos[query_id], self._neg[query_id] = {}, {}
        elif known[0] != text:
            raise DataFormatError(
                self.source, row + 1, field, f"query {query_id!r} has a different text than on line {known[1] + 1}"
            )

    def positive(self, query_id: str, doc_id: str, score: float | None = None) -> None:
        if doc_id in self._neg[query_id]:
            del self._neg[query_id][doc_id]
            self.conflicts += 1
        self._pos[query_id].setdefault(doc_id, score)

    def negative(self, query_id: str, doc_id: str, score: float | None = None) -> None:
        if doc_id in self._pos[query_id]:
            self.conflicts += 1
            return
        self._neg[query_id].setdefault(doc_id, score)

    def build(self) -> TrainingData:
        if self.conflicts:
            logger.warning(
                "%s: %d negatives are positives of the same query elsewhere; kept as positives",
                self.source,
                self.conflicts,
            )
        columns: dict[str, list] = {name: [] for name in ROW_FEATURES}
        for qid, (text, row) in self._queries.items():
            pos, neg = self._pos[qid], self._neg[qid]
            if not pos and not neg:  # as a canonical row without doc ids, refused where it is read
                problem = f"query {text!r} has no passages: a training row needs at least one candidate document"
                raise DataFormatError(self.source, row + 1, self.positives_field, problem)
            columns["query_id"].append(qid)
            columns["query"].append(text)
            columns["doc_ids"].append([*pos, *neg])
            columns["labels"].append([1.0] * len(pos) + [0.0] * len(neg))
            columns["teacher_scores"].append([*pos.values(), *neg.values()] if self.with_scores else [])
            columns["label_source"].append([LABEL_SOURCE] * (len(pos) + len(neg)))
        return TrainingData(rows=datasets.Dataset.from_dict(columns, features=ROW_FEATURES), corpus=self.corpus)


def _sentence_transformers_columns(ds: datasets.Dataset, source: str) -> tuple[str, str, list[str]]:
    columns = list(ds.column_names)
    if len(columns) < 2:
        raise DataFormatError(
            source, None, "positive", f"needs at least a query and a positive text column; columns found: {columns}"
        )
    query = next((c for c in ("anchor", "query") if c in columns), columns[0])
    rest = [c for c in columns if c != query]
    positive = "positive" if "positive" in rest else rest[0]
    rest = [c for c in rest if c != positive]
    ids = [c for c in rest if c == "id" or c.endswith("_id")]
    if ids:  # every other column is read as a negative passage: an id there would be trained on as text
        problem = (
            "an id column is not a passage (every column after the query and the positive is a negative text); "
            f"drop it with dataset.remove_columns({ids})"
        )
        raise DataFormatError(source, None, ids[0], problem)
    numbered = sorted((c for c in rest if c.startswith("negative_") and c[9:].isdigit()), key=lambda c: int(c[9:]))
    negatives = (["negative"] if "negative" in rest else []) + numbered
    negatives += [c for c in rest if c not in negatives]
    return query, positive, negatives


def from_sentence_transformers(
    ds: datasets.Dataset, source: str = "dataset", *, blank_lines: Sequence[int] = ()
) -> TrainingData:
    """Convert a sentence-transformers (anchor, positive[, negatives...]) text dataset.

    Every column after the query and the positive is a negative, so the dataset must hold text columns only (an id
    column, ``id`` or ``*_id``, is refused with the call that drops it). Labels
    are 1.0 / 0.0 with source ``"dataset"``; ``query_id`` is the query's :func:`content_id`; rows with the same anchor
    are merged into one row.
    """
    source = _source_name(ds, source)
    query_col, positive_col, negative_cols = _sentence_transformers_columns(ds, source)
    builder = _RowBuilder(source, with_scores=False, positives_field=positive_col)
    for row, values in _iter_rows(ds, [query_col, positive_col, *negative_cols], blank_lines):
        query = _text(values[query_col], source, row, query_col, "query")
        qid = content_id(query)
        builder.query(qid, query, row, query_col)
        positive = _text(values[positive_col], source, row, positive_col)
        builder.positive(qid, builder.document(content_id(positive), positive, row, positive_col))
        for col in negative_cols:
            negative = _text(values[col], source, row, col)
            builder.negative(qid, builder.document(content_id(negative), negative, row, col))
    return builder.build()


def _passage(item: Any, source: str, row: int, field: str, index: int) -> tuple[str, str]:
    if not isinstance(item, dict):
        raise DataFormatError(source, row + 1, field, f"item {index} must be a {{docid, title, text}} object")
    docid = item.get("docid")
    if isinstance(docid, bool) or not isinstance(docid, (str, int)) or not str(docid).strip():
        raise DataFormatError(source, row + 1, field, f"item {index} has no string 'docid' (got {docid!r})")
    title, text = item.get("title"), item.get("text")
    for key, value in (("title", title), ("text", text)):
        if value is not None and not isinstance(value, str):
            raise DataFormatError(source, row + 1, field, f"item {index}: '{key}' must be a string")
    full = document_text(title, text)
    if not full:
        raise DataFormatError(source, row + 1, field, f"item {index} (docid {docid!r}) has no text")
    return str(docid).strip(), full


def from_tevatron(ds: datasets.Dataset, source: str = "dataset", *, blank_lines: Sequence[int] = ()) -> TrainingData:
    """Convert a Tevatron dataset: ``query_id``, ``query``, ``positive_passages``, optional ``negative_passages``.

    Passages are ``{docid, title (optional), text}``; the corpus text is ``title + " " + text``. A ``docid`` seen with
    two different texts is an error. Rows with the same ``query_id`` are merged.
    """
    source = _source_name(ds, source)
    _require(ds, source, "query_id", "query", "positive_passages")
    columns = ["query_id", "query", "positive_passages"]
    has_negatives = "negative_passages" in ds.column_names
    if has_negatives:
        columns.append("negative_passages")
    builder = _RowBuilder(source, with_scores=False, positives_field="positive_passages")
    for row, values in _iter_rows(ds, columns, blank_lines):
        raw_qid = values["query_id"]
        if isinstance(raw_qid, bool) or not isinstance(raw_qid, (str, int)) or not str(raw_qid).strip():
            raise DataFormatError(source, row + 1, "query_id", f"must be a non-empty string, got {raw_qid!r}")
        qid = str(raw_qid).strip()
        builder.query(qid, _text(values["query"], source, row, "query", "query"), row, "query")
        for field in columns[2:]:
            value = values[field]
            items = _list([] if value is None and field == "negative_passages" else value, source, row, field)
            for index, item in enumerate(items):
                docid, text = _passage(item, source, row, field, index)
                builder.document(docid, text, row, field)
                if field == "positive_passages":
                    builder.positive(qid, docid)
                else:
                    builder.negative(qid, docid)
    return builder.build()


def from_flagembedding(
    ds: datasets.Dataset, source: str = "dataset", *, blank_lines: Sequence[int] = ()
) -> TrainingData:
    """Convert a FlagEmbedding dataset: ``query``, ``pos``, ``neg`` (lists of texts), ``pos_scores``, ``neg_scores``.

    When either score column exists, every row must carry one score per passage; they become ``teacher_scores``.
    The ``prompt`` and ``type`` columns are ignored.
    """
    source = _source_name(ds, source)
    _require(ds, source, "query", "pos")
    names = ds.column_names
    columns = [c for c in ("query", "pos", "neg", "pos_scores", "neg_scores") if c in names]
    with_scores = "pos_scores" in names or "neg_scores" in names
    builder = _RowBuilder(source, with_scores=with_scores, positives_field="pos")
    for row, values in _iter_rows(ds, columns, blank_lines):
        query = _text(values["query"], source, row, "query", "query")
        qid = content_id(query)
        builder.query(qid, query, row, "query")
        for field, add in (("pos", builder.positive), ("neg", builder.negative)):
            value = values.get(field)
            texts = _list([] if value is None and field == "neg" else value, source, row, field)
            if with_scores:
                scores = _scores(values.get(f"{field}_scores"), len(texts), source, row, f"{field}_scores")
            else:
                scores = [None] * len(texts)
            for text, score in zip(texts, scores):
                text = _text(text, source, row, field)
                add(qid, builder.document(content_id(text), text, row, field), score)
    return builder.build()


def _doc_id_list(value: Any, source: str, row: int, field: str) -> list[str]:
    """A list of document ids, each a string (an integer id would never match the corpus's string keys)."""
    doc_ids = _list(value, source, row, field)
    for position, doc_id in enumerate(doc_ids):
        if not isinstance(doc_id, str):
            problem = f"doc ids must be strings, got {doc_id!r} at position {position}"
            raise DataFormatError(source, row + 1, field, problem)
    return doc_ids


def _check_in_corpus(doc_ids: list[str], corpus: Mapping[str, str], source: str, row: int, field: str) -> None:
    missing = [d for d in doc_ids if d not in corpus]
    if missing:
        raise DataFormatError(source, row + 1, field, f"ids not in the corpus: {missing[:5]}")


def _from_canonical(
    ds: datasets.Dataset, corpus: dict[str, str], source: str, blank_lines: Sequence[int] = ()
) -> TrainingData:
    """Check canonical rows against their corpus and cast them to :data:`ROW_FEATURES` (plus
    :data:`EXCLUDED_COLUMN` when the rows have it)."""
    _require(ds, source, "query_id", "query", "doc_ids", "labels")
    features = ROW_FEATURES.copy()
    if EXCLUDED_COLUMN in ds.column_names:
        features[EXCLUDED_COLUMN] = EXCLUDED_FEATURE
    columns = [name for name in features if name in ds.column_names]
    fixed: dict[str, list] = {name: [] for name in features}
    query_texts: dict[str, tuple[str, int]] = {}  # query_id -> (text, first row)
    for row, values in _iter_rows(ds, columns, blank_lines):
        qid = _text(values["query_id"], source, row, "query_id", "query id")
        query = _text(values["query"], source, row, "query", "query")
        known_text, first_row = query_texts.setdefault(qid, (query, row))
        if known_text != query:
            problem = f"query {qid!r} has a different text than on line {first_row + 1}"
            raise DataFormatError(source, row + 1, "query", problem)
        doc_ids = _doc_id_list(values["doc_ids"], source, row, "doc_ids")
        checks = {name: _list(values.get(name) or [], source, row, name) for name in ROW_FEATURES if name[0] in "lt"}
        check_candidate_lists({"doc_ids": doc_ids, **checks}, source, row + 1, fields=tuple(checks))
        # a missing teacher score (NaN) is written to JSON as null: read it back as NaN
        checks["teacher_scores"] = [math.nan if score is None else score for score in checks["teacher_scores"]]
        for name in ("labels", "teacher_scores"):
            for position, value in enumerate(checks[name]):
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    problem = f"{name} must be numbers, got {value!r} at position {position}"
                    raise DataFormatError(source, row + 1, name, problem)
                if math.isinf(value) or (name == "labels" and math.isnan(value)):
                    allowed = "finite" if name == "labels" else "finite or NaN (none)"
                    problem = f"{name} must be {allowed}, got {value!r} at position {position}"
                    raise DataFormatError(source, row + 1, name, problem)
        _check_in_corpus(doc_ids, corpus, source, row, "doc_ids")
        if EXCLUDED_COLUMN in features:
            excluded = _doc_id_list(values.get(EXCLUDED_COLUMN) or [], source, row, EXCLUDED_COLUMN)
            _check_in_corpus(excluded, corpus, source, row, EXCLUDED_COLUMN)
            fixed[EXCLUDED_COLUMN].append(excluded)
        fixed["query_id"].append(qid)
        fixed["query"].append(query)
        fixed["doc_ids"].append(doc_ids)
        fixed["labels"].append(checks["labels"])
        fixed["teacher_scores"].append(checks["teacher_scores"])
        fixed["label_source"].append(checks["label_source"] or [LABEL_SOURCE] * len(doc_ids))
    return TrainingData(rows=datasets.Dataset.from_dict(fixed, features=features), corpus=dict(corpus))


def detect_format(ds: datasets.Dataset) -> str:
    """The shape a dataset's columns match (see :data:`EXPECTED_SHAPES`); ``ValueError`` when none does.

    Besides ``anchor``/``query`` + ``positive``, any dataset of two or more plain text columns counts as
    sentence-transformers (query, positive, negatives by position).
    """
    column_names = ds.column_names
    cols = set(column_names)
    if {"query_id", "query", "doc_ids", "labels"} <= cols:
        return "canonical"
    if {"query_id", "query", "positive_passages"} <= cols:
        return "tevatron"
    if {"query", "pos"} <= cols:
        return "flagembedding"
    if "positive" in cols and ({"anchor", "query"} & cols):
        return "sentence-transformers"
    text_types = ("string", "large_string")
    if len(cols) >= 2 and all(getattr(f, "dtype", None) in text_types for f in ds.features.values()):
        return "sentence-transformers"
    raise ValueError(f"unknown dataset shape; columns found: {list(column_names)}; expected one of: {EXPECTED_SHAPES}")


def _json_kind(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return {str: "string", list: "list", dict: "object"}.get(type(value), type(value).__name__)


def _file_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """Yield ``(line_number, raw line)`` of a file (1-based), a byte-order mark at its start removed: a line of only
    a byte-order mark is blank, as the JSON loader reads it."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            yield n, raw.removeprefix(codecs.BOM_UTF8) if n == 1 else raw


def _diagnose_json_lines(path: Path) -> tuple[int | None, str | None, str | None]:
    """Find why a JSONL file is not a table: the first malformed line, the first value whose type differs from the
    type the same field had on an earlier line, or no line at all. Returns ``(line, field, problem)``; ``problem`` is
    None when no cause was found."""
    kinds: dict[str, tuple[str, int]] = {}
    rows = 0
    for n, raw in _file_lines(path):
        if not raw.strip():
            continue
        rows += 1
        try:
            obj = json.loads(raw)
        except ValueError as exc:
            return n, None, f"malformed JSON: {exc}"
        if not isinstance(obj, dict):
            return n, None, f"expected a JSON object, got {type(obj).__name__}"
        for key, value in obj.items():
            kind = _json_kind(value)
            if kind is None:
                continue
            first = kinds.setdefault(key, (kind, n))
            if first[0] != kind:
                return n, key, f"a {kind} here but a {first[0]} on line {first[1]}"
    return None, None, None if rows else "the file holds no rows"


def _blank_lines(path: Path) -> list[int]:
    """For each blank line of a JSON lines file (the loader skips them), the number of rows above it, so that row
    ``r`` is on line ``r + 1 + bisect_right(blank_lines, r)``; ``[]`` for a JSON document that is not one object per
    line (an array, a pretty-printed object), whose rows are not lines."""
    blank_lines: list[int] = []
    rows = 0
    for _, raw in _file_lines(path):
        if not raw.strip():
            blank_lines.append(rows)
            continue
        if rows == 0:
            try:
                one_object = isinstance(json.loads(raw), dict)
            except ValueError:
                one_object = False
            if not one_object:
                return []
        rows += 1
    return blank_lines


def _load_local(path: Path) -> datasets.Dataset | datasets.DatasetDict:
    if path.is_dir():
        return datasets.load_from_disk(str(path))
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        builder = "json"
    elif suffix == ".parquet":
        builder = "parquet"
    else:
        raise ValueError(f"{path}: unsupported file type {suffix!r}; use .jsonl, .json, .parquet or a saved dataset")
    try:
        return datasets.load_dataset(builder, data_files=str(path), split="train")
    except Exception as exc:
        if builder != "json":
            raise
        line, field, problem = _diagnose_json_lines(path)
        raise DataFormatError(str(path), line, field, problem or f"could not be read as a table: {exc}") from exc


def _single_split(ds: datasets.Dataset | datasets.DatasetDict, source: str, split: str) -> datasets.Dataset:
    if isinstance(ds, datasets.DatasetDict):
        if split in ds:
            return ds[split]
        if len(ds) == 1:
            return next(iter(ds.values()))
        raise ValueError(f"{source}: a DatasetDict with no split {split!r}; its splits are {list(ds)}")
    return ds


def load_training_data(
    path_or_dataset: str | Path | datasets.Dataset | datasets.DatasetDict,
    format: str = "auto",
    *,
    corpus: dict[str, str] | None = None,
    split: str = "train",
) -> TrainingData:
    """Load training data from a ``Dataset``, a local ``.jsonl``/``.json``/``.parquet`` file, a ``save_to_disk`` folder
    or a BEIR folder (``load_beir(split=split)`` + :func:`rows_from_qrels`).

    ``format`` is one of :data:`FORMATS`; ``"auto"`` detects the shape by its columns. Canonical rows need their
    ``corpus`` (``doc_id -> text``). A ``DatasetDict`` contributes its ``split`` split (or its only split).
    """
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; expected one of {FORMATS}")
    blank_lines: list[int] = []  # of a JSON lines file, so that errors name its lines
    if isinstance(path_or_dataset, (datasets.Dataset, datasets.DatasetDict)):
        ds, source = path_or_dataset, None
    else:
        path = Path(path_or_dataset)
        if not path.exists():
            raise FileNotFoundError(f"{path} not found")
        if format == "beir" or (format == "auto" and path.is_dir() and (path / "corpus.jsonl").is_file()):
            data = load_beir(path, split=split)
            return TrainingData(rows=rows_from_qrels(data), corpus=data.corpus)
        ds, source = _load_local(path), str(path)
        if path.is_file() and path.suffix.lower() in (".jsonl", ".json"):
            blank_lines = _blank_lines(path)
    if format == "beir":
        raise ValueError("format='beir' needs a BEIR folder path")
    ds = _single_split(ds, source or "dataset", split)
    source = _source_name(ds, source)
    shape = detect_format(ds) if format == "auto" else format
    if shape == "canonical":
        if corpus is None:
            raise ValueError(
                f"{source}: canonical rows point into a corpus; pass corpus={{doc_id: text}} "
                "or load a BEIR folder instead"
            )
        return _from_canonical(ds, corpus, source, blank_lines)
    convert = {
        "sentence-transformers": from_sentence_transformers,
        "tevatron": from_tevatron,
        "flagembedding": from_flagembedding,
    }[shape]
    return convert(ds, source=source, blank_lines=blank_lines)
