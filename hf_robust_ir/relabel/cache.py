"""A persistent judgment cache on SQLite: nothing judged twice, nothing lost when a run is killed.

One table keyed by ``(judge_key, query_key, doc_key)``:

- ``judge_key``: :meth:`~hf_robust_ir.relabel.base.Judge.cache_key`, a digest of the judge's name and configuration;
- ``query_key``: SHA-256 of the query text *and* the labeled positives (ids and texts), since a judge that reads the
  positives as reference may give another verdict when they change (:func:`query_key`);
- ``doc_key``: SHA-256 of the candidate's id and text (:func:`doc_key`).

A list-wise judge's verdicts are stored under :func:`list_key` in place of the query key: the candidate list is part of
what was judged.

Each :meth:`JudgmentCache.put_many` is one transaction, committed at once, so a killed run loses at most the batch in
flight. The database runs in WAL mode with a lock timeout, so several processes can share one file.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from .base import Judgment, Verdict

PairKey = tuple[str, str]  # (query_key, doc_key)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS judgments (
    judge_key TEXT NOT NULL,
    query_key TEXT NOT NULL,
    doc_key TEXT NOT NULL,
    verdict TEXT NOT NULL,
    score REAL,
    rationale TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (judge_key, query_key, doc_key)
) WITHOUT ROWID
"""


def _digest(payload: object) -> str:
    return hashlib.sha256(json.dumps(payload, ensure_ascii=False).encode("utf-8")).hexdigest()


def query_key(query: str, positives: Sequence[tuple[str, str]] = ()) -> str:
    """SHA-256 of the query text and its labeled positives as ``(doc_id, text)`` pairs, in row order."""
    return _digest([query, [[doc_id, text] for doc_id, text in positives]])


def doc_key(doc_id: str, text: str) -> str:
    """SHA-256 of a candidate's id and text: an edited document is judged again."""
    return _digest([doc_id, text])


def list_key(query_key: str, doc_keys: Sequence[str]) -> str:
    """SHA-256 of a query key and the doc keys of the candidate list judged together, in order: the query key of a
    list-wise judge, whose verdict on a candidate depends on the others."""
    return _digest([query_key, list(doc_keys)])


class JudgmentCache:
    """Judgments on disk, by ``(judge_key, query_key, doc_key)``.

    Args:
        path: the SQLite file (created with its folder when missing).
        timeout: seconds to wait for another process's write lock before failing.
    """

    def __init__(self, path: str | Path, timeout: float = 60.0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(str(self.path), timeout=timeout)
        self._conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
        self._conn.execute("PRAGMA journal_mode = WAL")
        self._conn.execute("PRAGMA synchronous = NORMAL")  # with WAL: a killed process loses no committed batch
        with self._conn:
            self._conn.execute(_SCHEMA)

    def get_many(self, judge_key: str, keys: Iterable[PairKey]) -> dict[PairKey, Judgment]:
        """The cached judgments among ``keys`` (``(query_key, doc_key)`` pairs); missing pairs are left out."""
        found: dict[PairKey, Judgment] = {}
        cursor = self._conn.cursor()
        for qk, dk in keys:
            hit = cursor.execute(
                "SELECT verdict, score, rationale FROM judgments WHERE judge_key = ? AND query_key = ? AND doc_key = ?",
                (judge_key, qk, dk),
            ).fetchone()
            if hit is not None:
                found[(qk, dk)] = Judgment(Verdict(hit[0]), hit[1], hit[2])
        cursor.close()
        return found

    def put_many(self, judge_key: str, items: Iterable[tuple[str, str, Judgment]], replace: bool = False) -> int:
        """Store ``(query_key, doc_key, judgment)`` triples in one committed transaction; a pair already stored keeps
        its first verdict (so concurrent writers agree; a stored no verdict gives way to a verdict), or with
        ``replace=True`` takes the new one (a list-wise judge's answers for a whole candidate list replace those it
        gave on another list). Returns the number of triples given."""
        now = time.time()
        rows = [
            (judge_key, qk, dk, j.verdict.value, None if j.score is None else float(j.score), j.rationale or "", now)
            for qk, dk, j in items
        ]
        with self._conn:  # one transaction, committed on exit
            if not replace:
                stale = [(*row[:3], Verdict.NO_VERDICT.value) for row in rows if row[3] != Verdict.NO_VERDICT.value]
                self._conn.executemany(
                    "DELETE FROM judgments WHERE judge_key = ? AND query_key = ? AND doc_key = ? AND verdict = ?",
                    stale,
                )
            conflict = "REPLACE" if replace else "IGNORE"
            self._conn.executemany(f"INSERT OR {conflict} INTO judgments VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        return len(rows)

    def __len__(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM judgments").fetchone()[0])

    def count(self, judge_key: str) -> int:
        """Judgments stored for one judge configuration."""
        sql = "SELECT COUNT(*) FROM judgments WHERE judge_key = ?"
        return int(self._conn.execute(sql, (judge_key,)).fetchone()[0])

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> JudgmentCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"JudgmentCache({str(self.path)!r})"
