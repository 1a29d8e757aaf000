"""Load a BEIR folder (``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``); turn its qrels into canonical rows.

The JSONL and TSV files are parsed line by line here rather than with ``datasets``' json loader, because that loader
reports no line numbers: a bad line in a 500 MB corpus must be reported as ``corpus.jsonl, line 81234, field '_id'``.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets

from .schema import ROW_FEATURES, DataFormatError, RetrievalCorpus, document_text

QRELS_COLUMNS = ("query-id", "corpus-id", "score")


def _json_objects(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` for each non-blank line of a JSONL file (line numbers are 1-based)."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            if n == 1:  # json.loads reads past a byte-order mark, but a line of only a BOM is blank, not bad JSON
                raw = raw.removeprefix(codecs.BOM_UTF8)
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
                raise DataFormatError(str(path), n, None, f"malformed JSON: {exc}") from None
            if not isinstance(obj, dict):
                raise DataFormatError(str(path), n, None, f"expected a JSON object, got {type(obj).__name__}")
            yield n, obj


def _doc_id(value: Any, path: Path, line: int) -> str:
    if value is None:
        raise DataFormatError(str(path), line, "_id", "missing '_id'")
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        problem = f"'_id' must be a string or an integer, got {type(value).__name__}"
        raise DataFormatError(str(path), line, "_id", problem)
    doc_id = str(value).strip()
    if not doc_id:
        raise DataFormatError(str(path), line, "_id", "empty '_id'")
    return doc_id


def _optional_str(obj: dict[str, Any], key: str, path: Path, line: int) -> str:
    value = obj.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise DataFormatError(str(path), line, key, f"'{key}' must be a string, got {type(value).__name__}")
    return value


def _read_id_text_file(path: Path, with_title: bool, allow_empty: bool = False) -> dict[str, str]:
    """Read ``corpus.jsonl`` (``with_title``: text = title + " " + text) or ``queries.jsonl`` into ``{_id: text}``; a
    file without a line of data is refused unless ``allow_empty``."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    texts: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for n, obj in _json_objects(path):
        key = _doc_id(obj.get("_id"), path, n)
        if key in first_line:
            raise DataFormatError(str(path), n, "_id", f"duplicate _id {key!r} (first seen on line {first_line[key]})")
        title = _optional_str(obj, "title", path, n) if with_title else ""
        text = document_text(title, _optional_str(obj, "text", path, n))
        if not text and not (with_title and ("title" in obj or "text" in obj)):  # FiQA ships empty documents
            what = "document has no 'title' or 'text'" if with_title else "query text is empty"
            raise DataFormatError(str(path), n, "text", what)
        texts[key] = text
        first_line[key] = n
    if not texts and not allow_empty:  # a failed download, say: named here rather than at the first qrels line
        what = "documents" if with_title else "queries"
        raise DataFormatError(str(path), None, None, f"no {what}: the file is empty or holds only blank lines")
    return texts


def _parse_grade(value: str, path: Path, line: int) -> int:
    try:
        return int(value)
    except ValueError:
        pass
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if number.is_integer():
        return int(number)
    raise DataFormatError(str(path), line, "score", f"score must be an integer relevance grade, got {value!r}")


def _read_qrels(path: Path, corpus: dict[str, str], queries: dict[str, str]) -> dict[str, dict[str, int]]:
    """Read a BEIR qrels TSV (optional ``query-id corpus-id score`` header) into ``{query_id: {doc_id: grade}}``."""
    qrels: dict[str, dict[str, int]] = {}
    first_line: dict[tuple[str, str], int] = {}
    seen_content = False
    with open(path, "rb") as f:  # decoded line by line, so that bytes that are not UTF-8 are named by line
        for n, raw_bytes in enumerate(f, 1):
            try:
                raw = raw_bytes.decode("utf-8-sig" if n == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise DataFormatError(
                    str(path), n, None, f"not UTF-8 text ({exc.reason} at byte {exc.start})"
                ) from None
            if not raw.strip():
                continue
            parts = [p.strip() for p in raw.rstrip().split("\t")]  # a trailing tab adds no column
            if not seen_content:
                seen_content = True
                if parts[0].lower() == "query-id":
                    continue
            if len(parts) < 3:
                missing = QRELS_COLUMNS[len(parts)]
                raise DataFormatError(
                    str(path),
                    n,
                    missing,
                    f"expected 3 tab-separated columns {QRELS_COLUMNS}, found {len(parts)}"
                    + (" (columns must be separated by tabs)" if len(parts) == 1 and " " in parts[0] else ""),
                )
            if len(parts) > 3:
                raise DataFormatError(
                    str(path),
                    n,
                    None,
                    f"expected 3 tab-separated columns {QRELS_COLUMNS}, found {len(parts)} "
                    "(TREC qrels 'qid 0 docid grade' must be converted to BEIR's 3 columns)",
                )
            qid, did, score = parts
            grade = _parse_grade(score, path, n)
            if qid not in queries:
                raise DataFormatError(str(path), n, "query-id", f"query id {qid!r} is not in queries.jsonl")
            if did not in corpus:
                extra = split_corpus_path(path.parents[1], path.stem)
                where = f"corpus.jsonl or {extra.name}" if extra.is_file() else "corpus.jsonl"
                raise DataFormatError(str(path), n, "corpus-id", f"document id {did!r} is not in {where}")
            judged = qrels.setdefault(qid, {})
            if did in judged and judged[did] != grade:
                raise DataFormatError(
                    str(path),
                    n,
                    "score",
                    f"({qid!r}, {did!r}) judged {grade} here but {judged[did]} on line {first_line[(qid, did)]}",
                )
            judged[did] = grade
            first_line.setdefault((qid, did), n)
    return qrels


def split_corpus_path(folder: str | Path, split: str) -> Path:
    """``corpus.<split>.jsonl``: passages only ``split`` uses (synthetic passages written for its queries, say); they
    join ``corpus.jsonl`` when that split is loaded, and no other split searches them."""
    return Path(folder) / f"corpus.{split}.jsonl"


def load_corpus(folder: str | Path, split: str | None = None) -> dict[str, str]:
    """``corpus.jsonl`` of a BEIR folder, plus ``corpus.<split>.jsonl`` when ``split`` is given and the file exists;
    an id in both is refused (named by file, line and field), and so is a ``corpus.jsonl`` without documents."""
    corpus = _read_id_text_file(Path(folder) / "corpus.jsonl", with_title=True)
    extra = split_corpus_path(folder, split) if split else None
    if extra is not None and extra.is_file():
        added = _read_id_text_file(extra, with_title=True, allow_empty=True)
        clash = next((doc_id for doc_id in added if doc_id in corpus), None)
        if clash is not None:
            line = next(n for n, obj in _json_objects(extra) if _doc_id(obj.get("_id"), extra, n) == clash)
            raise DataFormatError(str(extra), line, "_id", f"document id {clash!r} is in corpus.jsonl too")
        corpus.update(added)
    return corpus


def load_beir(folder: str | Path, split: str = "test", queries_for_split_only: bool = True) -> RetrievalCorpus:
    """Load a BEIR folder: ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/<split>.tsv``.

    Documents read as ``title + " " + text`` (one with both empty is kept, as FiQA ships some); grades are kept as
    ints (grade-0 judgments included). With ``queries_for_split_only`` only the queries judged in ``split`` are kept,
    in ``queries.jsonl`` order. Passages in ``corpus.<split>.jsonl`` (if present) join the corpus of that split only:
    ``hf-robust-ir synthesize`` writes its passages there, so the test split is still searched over the source corpus.
    Bad input raises :class:`DataFormatError` naming the file, the line and the field.
    """
    folder = Path(folder)
    qrels_path = folder / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        available = sorted(p.stem for p in (folder / "qrels").glob("*.tsv")) if (folder / "qrels").is_dir() else []
        raise FileNotFoundError(f"{qrels_path} not found; splits available in {folder / 'qrels'}: {available}")
    corpus = load_corpus(folder, split)
    queries = _read_id_text_file(folder / "queries.jsonl", with_title=False)
    qrels = _read_qrels(qrels_path, corpus, queries)
    if queries_for_split_only:
        queries = {qid: text for qid, text in queries.items() if qid in qrels}
    return RetrievalCorpus(corpus=corpus, queries=queries, qrels=qrels, name=folder.resolve().name)


def rows_from_qrels(
    data: RetrievalCorpus,
    candidates: dict[str, list[tuple[str, float]]] | None = None,
    candidate_source: str = "mined",
) -> datasets.Dataset:
    """Canonical rows (:data:`ROW_FEATURES`), one per query with at least one positive (grade > 0), in qrels order.

    Each row lists the positives first (label = grade, source ``"qrels"``), then the judged non-relevant documents
    (label 0, source ``"qrels"``), then the other ``candidates[query_id]`` (label 0, source ``candidate_source``).

    Without ``candidates``, ``teacher_scores`` is empty. With ``candidates`` (``query_id -> [(doc_id, score), ...]``,
    e.g. a retriever's top-k), every listed document gets its candidate score as teacher score. The positives must be
    among the candidates and every candidate must be in the corpus (``ValueError`` otherwise); judged non-relevant
    documents that are not candidates are left out, since there is no score for them.
    """
    columns: dict[str, list] = {name: [] for name in ROW_FEATURES}
    for qid, judged in data.qrels.items():
        positives = [(did, grade) for did, grade in judged.items() if grade > 0]
        if not positives:
            continue
        if qid not in data.queries:
            raise ValueError(f"query {qid!r} of {data.name or 'the qrels'} has judgments but no text in queries")
        scores = None
        if candidates is not None:
            scores = {}
            for did, score in candidates.get(qid, []):
                scores.setdefault(str(did), float(score))
            unknown = [did for did in scores if did not in data.corpus]
            if unknown:
                raise ValueError(f"query {qid!r}: candidates {unknown[:5]} are not in the corpus")
            unscored = [did for did, _ in positives if did not in scores]
            if unscored:
                raise ValueError(
                    f"query {qid!r}: positives {unscored} have no score in candidates; "
                    "candidates must carry teacher scores for the positives too"
                )
        doc_ids = [did for did, _ in positives]
        labels = [float(grade) for _, grade in positives]
        sources = ["qrels"] * len(positives)
        for did, grade in judged.items():
            if grade <= 0 and (scores is None or did in scores):
                doc_ids.append(did)
                labels.append(0.0)
                sources.append("qrels")
        if scores is not None:
            listed = set(doc_ids)
            for did in scores:
                if did not in listed:
                    doc_ids.append(did)
                    labels.append(0.0)
                    sources.append(candidate_source)
        columns["query_id"].append(qid)
        columns["query"].append(data.queries[qid])
        columns["doc_ids"].append(doc_ids)
        columns["labels"].append(labels)
        columns["teacher_scores"].append([scores[did] for did in doc_ids] if scores is not None else [])
        columns["label_source"].append(sources)
    return datasets.Dataset.from_dict(columns, features=ROW_FEATURES)
