"""Teacher scores for training rows: fill ``teacher_scores`` of every candidate with a bi-encoder or a cross-encoder.

A bi-encoder teacher scores ``q·d`` of its own embeddings (cosine when it normalizes), a cross-encoder its raw
relevance logit of the (query, document) pair. Scores are raw: the distillation losses divide them by their
``teacher_temperature`` (e.g. 0.05 for a cosine bi-encoder teacher).

Scoring is resumable: with ``progress_file`` every finished chunk of rows is appended to a JSON-lines file (one line
per row: its index, query id and scores) and flushed, and a restarted call skips the rows already there, so an
interruption loses at most one chunk.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from tqdm.auto import tqdm

from .data.progress_file import open_for_append

logger = logging.getLogger(__name__)

TEACHER_KINDS = ("auto", "bi_encoder", "cross_encoder")


def load_teacher(path: str | Path, kind: str = "auto", max_length: int | None = None) -> Any:
    """A :class:`~hf_robust_ir.modeling.BiEncoder` or :class:`~hf_robust_ir.modeling.CrossEncoder` from a folder.

    ``kind="auto"`` recognizes the folder as :func:`hf_robust_ir.from_pretrained` does (a reranker folder, or a
    ``*ForSequenceClassification`` checkpoint, is a cross-encoder; anything else a bi-encoder).
    """
    if kind not in TEACHER_KINDS:
        raise ValueError(f"teacher kind must be one of {TEACHER_KINDS}, got {kind!r}")
    from .hub import _model_class
    from .modeling import BiEncoder, CrossEncoder

    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"teacher {str(path)!r} is not a model folder")
    model_class = {"bi_encoder": BiEncoder, "cross_encoder": CrossEncoder}.get(kind) or _model_class(folder)
    overrides: dict[str, Any] = {}
    if max_length is not None:
        overrides = (
            {"max_length": max_length}
            if model_class is CrossEncoder
            else {"query_max_length": max_length, "document_max_length": max_length}
        )
    return model_class.from_pretrained(str(folder), **overrides)


def _is_cross_encoder(teacher: Any) -> bool:
    return hasattr(teacher, "predict") and not hasattr(teacher, "encode_queries")


def score_candidates(
    teacher: Any,
    queries: list[str],
    candidates: list[list[str]],
    batch_size: int = 64,
    bf16: bool = False,
) -> list[list[float]]:
    """Teacher scores of each query's candidate texts (``candidates[i]`` belongs to ``queries[i]``).

    A bi-encoder encodes every distinct candidate text of the call once; a cross-encoder scores each pair.
    """
    if len(queries) != len(candidates):
        raise ValueError(f"{len(queries)} queries but {len(candidates)} candidate lists")
    if _is_cross_encoder(teacher):
        pairs = [(q, d) for q, docs in zip(queries, candidates) for d in docs]
        flat = teacher.predict(pairs, batch_size=batch_size, bf16=bf16)
    else:
        distinct = list(dict.fromkeys(d for docs in candidates for d in docs))
        position = {text: i for i, text in enumerate(distinct)}
        query_vectors = teacher.encode_queries(queries, batch_size=batch_size, bf16=bf16)
        document_vectors = teacher.encode_documents(distinct, batch_size=batch_size, bf16=bf16)
        flat = np.concatenate(
            [
                document_vectors[[position[d] for d in docs]] @ query_vectors[i]
                for i, docs in enumerate(candidates)
                if docs
            ]
            or [np.zeros(0, dtype=np.float32)]
        )
    out, start = [], 0
    for docs in candidates:
        out.append([float(x) for x in flat[start : start + len(docs)]])
        start += len(docs)
    return out


SCORE_NEUTRAL_SETTINGS = ("temperature", "base_model")
"""Fields of a teacher's ``retrieval_config`` that leave its raw scores unchanged."""


def _progress_header(teacher: Any, bf16: bool) -> dict[str, Any]:
    """The first line of a progress file: which teacher (a digest of its weights) scored the rows, and how (precision,
    and the settings that change its scores: token limits, pooling, prefixes)."""
    from .relabel.base import weights_digest

    config = getattr(teacher, "retrieval_config", None)
    settings = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else {}
    settings = {name: value for name, value in settings.items() if name not in SCORE_NEUTRAL_SETTINGS}
    return {"teacher": weights_digest(teacher) or type(teacher).__name__, "bf16": bool(bf16), "settings": settings}


def _texts_digest(query: str, doc_ids: list[str], corpus: Mapping[str, str]) -> str:
    """A short digest of the texts a row's scores were computed from (its query and candidates), so that a resume
    over edited texts with the same ids is refused rather than given stale scores."""
    texts = [query, *(corpus.get(doc_id) for doc_id in doc_ids)]
    return hashlib.sha256(json.dumps(texts, ensure_ascii=False).encode("utf-8")).hexdigest()[:16]


def _read_progress(
    path: Path, rows: datasets.Dataset, header: dict[str, Any], corpus: Mapping[str, str]
) -> dict[int, list[float]]:
    done: dict[int, list[float]] = {}
    if not path.exists():
        return done
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                # a line cut by an interruption: that chunk is scored again
                logger.warning("%s line %d is incomplete; scoring its rows again", path, line_number)
                continue
            if "teacher" in record:
                if record != header:
                    raise ValueError(
                        f"{path} line {line_number}: these scores come from another teacher, precision or settings "
                        f"({record} against {header}); delete the file or use another output folder"
                    )
                continue
            index = int(record["index"])
            if index >= len(rows) or rows[index]["query_id"] != record["query_id"]:
                raise ValueError(
                    f"{path} line {line_number}: row {index} ({record['query_id']!r}) is not a row of these "
                    "training rows; delete the file or use another output folder"
                )
            if record.get("doc_ids", rows[index]["doc_ids"]) != rows[index]["doc_ids"]:
                raise ValueError(f"{path} line {line_number}: field 'doc_ids' does not match row {index}'s candidates")
            if len(record["scores"]) != len(rows[index]["doc_ids"]):
                raise ValueError(f"{path} line {line_number}: field 'scores' does not match row {index}'s candidates")
            # files written before the digest have none: their ids alone are checked
            if "texts" in record and record["texts"] != _texts_digest(rows[index]["query"], record["doc_ids"], corpus):
                raise ValueError(
                    f"{path} line {line_number}: field 'texts' does not match row {index}: its query or candidate "
                    "texts changed since it was scored; delete the file or use another output folder"
                )
            done[index] = record["scores"]
    return done


def _check_finite_scores(query_id: str, doc_ids: list[str], scores: list[float]) -> None:
    """Refuse a NaN or infinite teacher score (a teacher that overflows under half precision, a broken checkpoint): the
    collator reads such a score as "no teacher score", so distillation would leave the candidate out without a word."""
    broken = next((doc_id for doc_id, score in zip(doc_ids, scores) if not math.isfinite(score)), None)
    if broken is not None:
        raise ValueError(
            f"teacher score of query {query_id!r}, document {broken!r} is NaN or infinite: the teacher's output is "
            "broken (an overflow under half precision, say)"
        )


def score_rows(
    rows: datasets.Dataset,
    corpus: Mapping[str, str],
    teacher: Any,
    batch_size: int = 64,
    chunk_size: int = 256,
    progress_file: str | Path | None = None,
    bf16: bool = False,
    show_progress: bool = True,
) -> datasets.Dataset:
    """``rows`` with ``teacher_scores`` set for every candidate by ``teacher`` (existing teacher scores are replaced).

    Rows are scored ``chunk_size`` at a time; with ``progress_file`` each finished chunk is appended there and a
    later call with the same file resumes after the last finished chunk. The file names the teacher (a digest of its
    weights, its token limits) and each row's candidates and texts: a file of another teacher, precision, settings, rows
    or texts is refused, not mixed in.
    """
    if chunk_size < 1 or batch_size < 1:
        raise ValueError("batch_size and chunk_size must be >= 1")
    path = Path(progress_file) if progress_file is not None else None
    header = _progress_header(teacher, bf16) if path is not None else {}
    done = _read_progress(path, rows, header, corpus) if path is not None else {}
    if done:
        logger.info("resuming: %d of %d rows already scored in %s", len(done), len(rows), path)
    todo = [i for i in range(len(rows)) if i not in done]
    handle = None
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open_for_append(path)
        fresh = handle.tell() == 0
        if fresh:
            handle.write(json.dumps(header) + "\n")
    try:
        with tqdm(
            total=len(rows), initial=len(done), desc="teacher scores", unit="row", disable=not show_progress
        ) as bar:
            for start in range(0, len(todo), chunk_size):
                chunk = todo[start : start + chunk_size]
                batch = rows.select(chunk)
                missing = [d for ids in batch["doc_ids"] for d in ids if d not in corpus]
                if missing:
                    raise KeyError(f"document id {missing[0]!r} of a training row is not in the corpus")
                scores = score_candidates(
                    teacher,
                    list(batch["query"]),
                    [[corpus[d] for d in ids] for ids in batch["doc_ids"]],
                    batch_size=batch_size,
                    bf16=bf16,
                )
                for index, query, query_id, doc_ids, row_scores in zip(
                    chunk, batch["query"], batch["query_id"], batch["doc_ids"], scores
                ):
                    _check_finite_scores(query_id, doc_ids, row_scores)
                    done[index] = row_scores
                    if handle is not None:
                        texts = _texts_digest(query, doc_ids, corpus)
                        record = {"index": index, "query_id": query_id, "doc_ids": doc_ids, "texts": texts}
                        record["scores"] = row_scores
                        handle.write(json.dumps(record) + "\n")
                if handle is not None:
                    handle.flush()
                bar.update(len(chunk))
    finally:
        if handle is not None:
            handle.close()
    if "teacher_scores" in rows.column_names:
        rows = rows.remove_columns("teacher_scores")
    features = rows.features.copy()
    features["teacher_scores"] = datasets.Sequence(datasets.Value("float32"))
    return rows.add_column("teacher_scores", [done[i] for i in range(len(rows))], feature=features["teacher_scores"])
