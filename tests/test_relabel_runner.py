"""The relabeling run: cache first, judge only uncached pairs, identical outputs on rerun, resume after SIGKILL; no
verdicts are asked again, and list-wise judges (the cascade) give the same labels whatever was cached."""

import importlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import datasets
import pytest
from test_relabel_judges import ARHN_CANDIDATES, ARHN_POSITIVE, QUERY, ScriptedBackend, _arhn_answer

from hf_robust_ir.data.schema import ROW_FEATURES, DataFormatError
from hf_robust_ir.relabel.arhn import AnswerabilityJudge
from hf_robust_ir.relabel.base import NO_VERDICT, Judge, Judgment, Verdict
from hf_robust_ir.relabel.cache import JudgmentCache, doc_key, query_key
from hf_robust_ir.relabel.judges import CascadeJudge
from hf_robust_ir.relabel.runner import relabel

REPO_ROOT = Path(__file__).resolve().parents[1]

# A deterministic judge: a candidate containing "answer" is relevant, "unsure" gets no verdict. Every judged pair
# appends one line to ``count_file`` (before sleeping), so tests count the pairs a run sent to the judge.
JUDGE_MODULE = """
import time
from hf_robust_ir.relabel.base import NO_VERDICT, Judge, Judgment, Verdict


class KeywordJudge(Judge):
    name = "keyword"

    def __init__(self, keyword="answer", count_file=None, sleep=0.0, listwise=False):
        self.keyword, self.count_file, self.sleep, self.listwise = keyword, count_file, sleep, listwise
        self.requests = []

    def judge(self, query, positives, candidates):
        self.requests.append(list(candidates))
        out = []
        for text in candidates:
            if self.count_file:
                with open(self.count_file, "a") as f:
                    f.write(text + "\\n")
            time.sleep(self.sleep)
            if "unsure" in text:
                out.append(NO_VERDICT)
            elif self.keyword in text:
                out.append(Judgment(Verdict.RELEVANT, 1.0, "keyword"))
            else:
                out.append(Judgment(Verdict.NOT_RELEVANT, 0.0, "no keyword"))
        return out

    def config(self):
        return {"keyword": self.keyword, "listwise": self.listwise}


class MarkJudge(KeywordJudge):
    name = "marks"

    def arhn_labels(self, query, positives, candidates):
        self.requests.append(list(candidates))
        return ["R" if "answer" in t else "F" if "span" in t else None for t in candidates]
"""

N_QUERIES, N_NEG = 12, 5
# (i, k) with i*k % 7 == 3 and (i + k) % 4 != 0: (5, 2), (6, 4), (8, 3), (10, 1). They get no verdict: never cached.
UNSURE_PAIRS = 4


def _corpus():
    corpus = {f"p{i}": f"positive passage {i}" for i in range(N_QUERIES)}
    for i in range(N_QUERIES):
        for k in range(N_NEG):
            word = "answer" if (i + k) % 4 == 0 else "unsure" if (i * k) % 7 == 3 else "span" if k == 4 else "other"
            corpus[f"n{i}_{k}"] = f"negative {i} {k} {word}"
    return corpus


def _rows_list():
    rows = []
    for i in range(N_QUERIES):
        doc_ids = [f"p{i}"] + [f"n{i}_{k}" for k in range(N_NEG)]
        rows.append(
            {
                "query_id": f"q{i}",
                "query": f"question {i}",
                "doc_ids": doc_ids,
                "labels": [1.0] + [0.0] * N_NEG,
                "teacher_scores": [],
                "label_source": ["qrels"] + ["mined"] * N_NEG,
            }
        )
    return rows


@pytest.fixture()
def judge_module(tmp_path, monkeypatch):
    folder = tmp_path / "judge_pkg"
    folder.mkdir()
    (folder / "kwjudge.py").write_text(JUDGE_MODULE)
    monkeypatch.syspath_prepend(str(folder))
    sys.modules.pop("kwjudge", None)
    return importlib.import_module("kwjudge")


def _dataset():
    return datasets.Dataset.from_list(_rows_list(), features=ROW_FEATURES)


def _flagged(corpus, i):
    return [k for k in range(N_NEG) if "answer" in corpus[f"n{i}_{k}"]]


def test_relabel_then_rerun_judges_only_the_pairs_without_a_verdict(tmp_path, judge_module):
    corpus, rows = _corpus(), _dataset()
    assert sum("unsure" in text for text in corpus.values()) == UNSURE_PAIRS
    judge = judge_module.KeywordJudge()
    with JudgmentCache(tmp_path / "c.sqlite") as cache:
        first = relabel(rows, corpus, judge, ["rlhn", "hn_remove", "remove"], cache, batch_size=5,
                        show_progress_bar=False)  # fmt: skip
        pairs = N_QUERIES * N_NEG
        assert first.summary["judged_pairs"] == pairs and first.summary["cache_hits"] == 0
        assert first.summary["judge_calls"] == 3  # one judge_many per batch of 5 rows
        assert len(cache) == pairs - UNSURE_PAIRS
        again_judge = judge_module.KeywordJudge()
        again = relabel(rows, corpus, again_judge, ["rlhn", "hn_remove", "remove"], cache, batch_size=3,
                        show_progress_bar=False)  # fmt: skip
    assert again.summary["cache_hits"] == pairs - UNSURE_PAIRS and again.summary["judged_pairs"] == UNSURE_PAIRS
    assert again.summary["judge_calls"] == 3  # rows 5 | 6 and 8 | 10, in three batches of 3 rows
    assert sorted(text for request in again_judge.requests for text in request) == [
        "negative 10 1 unsure", "negative 5 2 unsure", "negative 6 4 unsure", "negative 8 3 unsure"
    ]  # fmt: skip
    for name in first.datasets:
        assert first.datasets[name].to_list() == again.datasets[name].to_list()

    rlhn = first.datasets["rlhn"]
    for i, row in enumerate(rlhn):
        flagged = _flagged(corpus, i)
        assert row["labels"] == [1.0] + [1.0 if k in flagged else 0.0 for k in range(N_NEG)]
        assert row["label_source"] == ["qrels"] + ["relabeled:keyword" if k in flagged else "mined" for k in range(5)]
    hn = first.datasets["hn_remove"]
    assert [len(r["doc_ids"]) for r in hn] == [1 + N_NEG - len(_flagged(corpus, i)) for i in range(N_QUERIES)]
    assert len(first.datasets["remove"]) == sum(not _flagged(corpus, i) for i in range(N_QUERIES))

    total_flags = sum(len(_flagged(corpus, i)) for i in range(N_QUERIES))
    summary = first.summary
    assert summary["verdicts"]["relevant"] == total_flags
    assert summary["flags_per_judge"] == {"keyword": total_flags}
    assert summary["flags_per_label_source"] == {"mined": total_flags}
    assert summary["strategies"]["rlhn"]["labels_changed"] == total_flags
    assert summary["strategies"]["hn_remove"]["candidates_removed"] == total_flags
    assert summary["strategies"]["remove"]["queries_dropped"] == N_QUERIES - len(first.datasets["remove"])


def test_pointwise_judge_gets_only_uncached_candidates_and_listwise_the_whole_list(tmp_path, judge_module):
    corpus, rows = _corpus(), _dataset()
    with JudgmentCache(tmp_path / "c.sqlite") as cache:
        relabel(rows, corpus, judge_module.KeywordJudge(), ["rlhn"], cache, max_candidates=2, show_progress_bar=False)
        judge = judge_module.KeywordJudge()
        result = relabel(rows, corpus, judge, ["rlhn"], cache, show_progress_bar=False)
        # row 10's candidate 1 got no verdict in the first run: it is asked again with the three not yet judged
        assert [len(request) for request in judge.requests] == [N_NEG - 2] * 10 + [N_NEG - 1, N_NEG - 2]
        assert result.summary["cache_hits"] == 2 * N_QUERIES - 1
        assert result.summary["judged_pairs"] == (N_NEG - 2) * N_QUERIES + 1

    with JudgmentCache(tmp_path / "list.sqlite") as cache:
        relabel(rows, corpus, judge_module.KeywordJudge(listwise=True), ["rlhn"], cache, max_candidates=2,
                show_progress_bar=False)  # fmt: skip
        judge = judge_module.KeywordJudge(listwise=True)
        relabel(rows, corpus, judge, ["rlhn"], cache, show_progress_bar=False)
        assert all(len(request) == N_NEG for request in judge.requests)


def test_threshold_and_arhn(tmp_path, judge_module):
    corpus, rows = _corpus(), _dataset()
    with JudgmentCache(tmp_path / "c.sqlite") as cache:
        result = relabel(rows, corpus, judge_module.MarkJudge(), ["threshold", "arhn_rf"], cache, max_flagged=1,
                         show_progress_bar=False)  # fmt: skip
        assert len(result.datasets["threshold"]) == sum(len(_flagged(corpus, i)) <= 1 for i in range(N_QUERIES))
        marks_cached = cache.count(judge_module.MarkJudge().cache_key() + ":arhn")
        assert marks_cached == N_QUERIES * N_NEG
    rf = result.datasets["arhn_rf"]
    for row in rf:
        for doc_id, label, source in zip(row["doc_ids"], row["labels"], row["label_source"]):
            text = corpus[doc_id]
            assert "span" not in text or "answer" in text  # F candidates left the negatives
            assert (label == 1.0 and source == "relabeled:marks") == ("answer" in text)
    assert result.summary["arhn_marks"]["R"] == sum(len(_flagged(corpus, i)) for i in range(N_QUERIES))
    with pytest.raises(ValueError, match="arhn_labels"):
        relabel(rows, corpus, judge_module.KeywordJudge(), ["arhn_r"], JudgmentCache(tmp_path / "x.sqlite"))


def _write_inputs(tmp_path):
    beir = tmp_path / "beir"
    (beir / "qrels").mkdir(parents=True)
    corpus = _corpus()
    with open(beir / "corpus.jsonl", "w") as f:
        for doc_id, text in corpus.items():
            f.write(json.dumps({"_id": doc_id, "title": "", "text": text}) + "\n")
    with open(beir / "queries.jsonl", "w") as f:
        for row in _rows_list():
            f.write(json.dumps({"_id": row["query_id"], "text": row["query"]}) + "\n")
    (beir / "qrels" / "train.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\tp{i}\t1\n" for i in range(N_QUERIES))
    )
    rows_file = tmp_path / "rows.jsonl"
    rows_file.write_text("".join(json.dumps(r) + "\n" for r in _rows_list()))
    return beir, rows_file


def _recipe(tmp_path, beir, rows_file, out, count_file, sleep):
    recipe = tmp_path / f"recipe_{out.name}.yaml"
    recipe.write_text(
        "judge:\n"
        "  type: kwjudge:KeywordJudge\n"
        f"  count_file: {count_file}\n"
        f"  sleep: {sleep}\n"
        "strategies: [rlhn, hn_remove, remove]\n"
        "max_flagged: 8\n"
        f"rows: {rows_file}\n"
        f"data_dir: {beir}\n"
        "batch_size: 2\n"
        f"output_dir: {out}\n"
        "show_progress_bar: false\n"
    )
    return recipe


def _cached(path):
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(path, timeout=1) as conn:
            return conn.execute("SELECT COUNT(*) FROM judgments").fetchone()[0]
    except sqlite3.OperationalError:  # table not created yet
        return 0


def _lines(path):
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_killed_run_resumes_without_judging_twice_and_writes_the_same_output(tmp_path, judge_module):
    from hf_robust_ir.cli import main

    beir, rows_file = _write_inputs(tmp_path)
    pairs = N_QUERIES * N_NEG
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "judge_pkg"), str(REPO_ROOT)])}

    # the killed run: SIGKILL once a few batches are committed
    out, count = tmp_path / "resumed", tmp_path / "resumed_calls.txt"
    recipe = _recipe(tmp_path, beir, rows_file, out, count, sleep=0.05)
    command = [sys.executable, "-m", "hf_robust_ir.cli", "relabel", "--config", str(recipe)]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while _cached(out / "judgments.sqlite") < 20 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    cached_after_kill = _cached(out / "judgments.sqlite")
    calls_before_kill = _lines(count)
    assert 20 <= cached_after_kill < pairs
    # lost: at most the batch in flight, and the pairs without a verdict (not cached)
    assert 0 <= calls_before_kill - cached_after_kill <= 2 * N_NEG + UNSURE_PAIRS
    assert not (out / "summary.json").exists()

    # started again: judges exactly the uncached pairs (no verdicts included)
    recipe = _recipe(tmp_path, beir, rows_file, out, count, sleep=0.0)
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    calls_second_run = _lines(count) - calls_before_kill
    assert calls_second_run == pairs - cached_after_kill
    assert calls_before_kill + calls_second_run - (calls_before_kill - cached_after_kill) == pairs
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["cache_hits"] == cached_after_kill and summary["judged_pairs"] == pairs - cached_after_kill

    # an uninterrupted run in this process writes the same bytes
    clean, clean_count = tmp_path / "clean", tmp_path / "clean_calls.txt"
    assert main(["relabel", "--config", str(_recipe(tmp_path, beir, rows_file, clean, clean_count, 0.0))]) == 0
    assert _lines(clean_count) == pairs
    for name in ("rlhn", "hn_remove", "remove"):
        assert (out / f"{name}.jsonl").read_bytes() == (clean / f"{name}.jsonl").read_bytes(), name
        arrows = sorted(p.name for p in (clean / name).glob("*.arrow"))
        assert arrows and arrows == sorted(p.name for p in (out / name).glob("*.arrow"))
        for arrow in arrows:
            assert (out / name / arrow).read_bytes() == (clean / name / arrow).read_bytes(), (name, arrow)
        reloaded = datasets.load_from_disk(str(out / name))
        assert reloaded.to_list() == [json.loads(line) for line in (out / f"{name}.jsonl").read_text().splitlines()]
    resumed_summary = json.loads((out / "summary.json").read_text())
    clean_summary = json.loads((clean / "summary.json").read_text())
    for key in ("verdicts", "flags_per_label_source", "strategies", "flags_per_judge"):
        assert resumed_summary[key] == clean_summary[key]


# ---------------------------------------------------------------- no verdicts are asked again; list-wise judges
class _TableJudge(Judge):
    """Verdicts from ``table`` (candidate text -> verdict, default NOT_RELEVANT); ``down`` answers NO_VERDICT to all,
    as a judge whose requests fail. Requests are recorded."""

    def __init__(self, name, table, down=False):
        self.name, self.table, self.down = name, table, down
        self.requests = []

    def judge(self, query, positives, candidates):
        self.requests.append(list(candidates))
        if self.down:
            return [NO_VERDICT] * len(candidates)
        return [Judgment(self.table.get(text, Verdict.NOT_RELEVANT), None, "table") for text in candidates]

    def config(self):
        return {"table": sorted(self.table)}


def _one_row(candidates):
    doc_ids = ["p"] + [f"n{k}" for k in range(len(candidates))]
    row = {"query_id": "q", "query": QUERY, "doc_ids": doc_ids, "labels": [1.0] + [0.0] * len(candidates),
           "teacher_scores": [], "label_source": []}  # fmt: skip
    corpus = {"p": ARHN_POSITIVE, **{f"n{k}": text for k, text in enumerate(candidates)}}
    return datasets.Dataset.from_list([row], features=ROW_FEATURES), corpus


def test_no_verdicts_are_not_cached_and_a_rerun_judges_them(tmp_path):
    rows, corpus = _one_row(["fn", "neg"])
    with JudgmentCache(tmp_path / "c.sqlite") as cache:
        down = relabel(rows, corpus, _TableJudge("t", {"fn": Verdict.RELEVANT}, down=True), ["rlhn"], cache,
                       show_progress_bar=False)  # fmt: skip
        assert down.summary["verdicts"] == {"no_verdict": 2} and len(cache) == 0
        judge = _TableJudge("t", {"fn": Verdict.RELEVANT})  # the same judge (same cache key), back up
        up = relabel(rows, corpus, judge, ["rlhn"], cache, show_progress_bar=False)
        assert judge.requests == [["fn", "neg"]] and len(cache) == 2
    assert up.summary["verdicts"] == {"not_relevant": 1, "relevant": 1}
    assert up.datasets["rlhn"][0]["labels"] == [1.0, 1.0, 0.0]


def test_a_no_verdict_stored_by_an_earlier_version_is_asked_again(tmp_path):
    rows, corpus = _one_row(["fn"])
    judge = _TableJudge("t", {"fn": Verdict.RELEVANT})
    pair = (query_key(QUERY, [("p", ARHN_POSITIVE)]), doc_key("n0", "fn"))
    with JudgmentCache(tmp_path / "c.sqlite") as cache:
        cache.put_many(judge.cache_key(), [(*pair, NO_VERDICT)])
        result = relabel(rows, corpus, judge, ["rlhn"], cache, show_progress_bar=False)
        assert judge.requests == [["fn"]] and result.summary["cache_hits"] == 0
        assert cache.get_many(judge.cache_key(), [pair])[pair].verdict is Verdict.RELEVANT
    assert result.datasets["rlhn"][0]["labels"] == [1.0, 1.0]


def test_undecided_arhn_marks_are_not_cached_and_a_rerun_decides_them(tmp_path):
    rows, corpus = _one_row(ARHN_CANDIDATES)
    with JudgmentCache(tmp_path / "c.sqlite") as cache:
        down = ScriptedBackend(answer=lambda messages: None)  # every request fails
        first = relabel(rows, corpus, AnswerabilityJudge(down), ["arhn_rf"], cache, show_progress_bar=False)
        assert first.marks == [[None] * 5] and len(cache) == 0
        assert first.datasets["arhn_rf"][0]["labels"] == [1.0, 0.0, 0.0, 0.0, 0.0]
        up = ScriptedBackend(answer=_arhn_answer)
        again = relabel(rows, corpus, AnswerabilityJudge(up), ["arhn_rf"], cache, show_progress_bar=False)
        # R, F and NO_ANSWER are decided and cached; the span not in its passage ("Cats sleep.") is not
        assert len(cache) == 3
    assert again.marks == [[None, "R", "F", None, None]]
    row = again.datasets["arhn_rf"][0]
    assert row["doc_ids"] == ["p", "n0", "n2", "n3"] and row["labels"] == [1.0, 1.0, 0.0, 0.0]  # n1 (F) removed


def _cascade():
    # the cheap judge flags "neg"; the query is escalated, and the expensive judge flags "fn" instead
    return CascadeJudge(_TableJudge("cheap", {"neg": Verdict.RELEVANT}), _TableJudge("exp", {"fn": Verdict.RELEVANT}))


@pytest.mark.parametrize("first_candidates", [1, 2])
def test_cascade_labels_do_not_depend_on_what_was_cached(tmp_path, first_candidates):
    rows, corpus = _one_row(["fn", "neg", "other"])
    with JudgmentCache(tmp_path / "fresh.sqlite") as cache:
        fresh = relabel(rows, corpus, _cascade(), ["rlhn"], cache, show_progress_bar=False)
    # escalated: the expensive judge decides all three candidates
    assert fresh.judgments == [[None, "relevant", "not_relevant", "not_relevant"]]
    assert fresh.datasets["rlhn"][0]["labels"] == [1.0, 1.0, 0.0, 0.0]
    with JudgmentCache(tmp_path / "partial.sqlite") as cache:
        # a first run on fewer candidates: on ["fn"] alone nothing is flagged and the cheap verdict is cached; on
        # ["fn", "neg"] the query is escalated
        relabel(rows, corpus, _cascade(), ["rlhn"], cache, max_candidates=first_candidates, show_progress_bar=False)
        cascade = _cascade()
        later = relabel(rows, corpus, cascade, ["rlhn"], cache, show_progress_bar=False)
        assert cascade.cheap.requests == [["fn", "neg", "other"]]  # the whole list, not only the uncached candidate
        assert later.judgments == fresh.judgments
        assert later.datasets["rlhn"][0]["labels"] == [1.0, 1.0, 0.0, 0.0]
        again = relabel(rows, corpus, _cascade(), ["rlhn"], cache, show_progress_bar=False)  # all cached now
    assert again.summary["judge_calls"] == 0 and again.judgments == fresh.judgments


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"batch_size": 0}, "batch_size must be >= 1, got 0"),
        ({"max_candidates": -1}, "max_candidates must be >= 1, got -1"),
        ({"max_flagged": -1}, "max_flagged must be >= 0, got -1"),
    ],
)
def test_counts_out_of_range_are_refused_before_judging(tmp_path, setting, message):
    rows, corpus = _one_row(["fn", "neg"])
    judge = _TableJudge("t", {"fn": Verdict.RELEVANT})
    with JudgmentCache(tmp_path / "c.sqlite") as cache, pytest.raises(ValueError, match=message):
        relabel(rows, corpus, judge, ["rlhn"], cache, show_progress_bar=False, **setting)
    assert judge.requests == []


def test_threshold_without_max_flagged_is_refused_before_judging(tmp_path):
    rows, corpus = _one_row(["fn", "neg"])
    judge = _TableJudge("t", {"fn": Verdict.RELEVANT})
    with JudgmentCache(tmp_path / "c.sqlite") as cache, pytest.raises(ValueError, match="threshold.*max_flagged"):
        relabel(rows, corpus, judge, ["rlhn", "threshold"], cache, show_progress_bar=False)
    assert judge.requests == []


def test_no_rows_give_empty_datasets_and_a_summary(tmp_path):
    rows = datasets.Dataset.from_dict({name: [] for name in ROW_FEATURES}, features=ROW_FEATURES)
    judge = _TableJudge("t", {})
    with JudgmentCache(tmp_path / "c.sqlite") as cache:
        result = relabel(rows, {}, judge, ["rlhn", "remove"], cache, show_progress_bar=False)
    assert judge.requests == [] and result.summary["queries"] == 0
    assert {name: len(ds) for name, ds in result.datasets.items()} == {"rlhn": 0, "remove": 0}
    assert result.datasets["rlhn"].features == ROW_FEATURES


def test_a_document_listed_twice_is_judged_once_and_counted_per_candidate(tmp_path):
    """Row [p, fn, fn, neg] (fn twice, as content ids make of a repeated negative text): the judge is asked about
    fn once; every candidate is either a cache hit or a judged pair, on the first run and on the rerun."""
    rows, corpus = _one_row(["fn", "neg"])
    rows = datasets.Dataset.from_list(
        [{**rows[0], "doc_ids": ["p", "n0", "n0", "n1"], "labels": [1.0, 0.0, 0.0, 0.0]}], features=ROW_FEATURES
    )
    with JudgmentCache(tmp_path / "c.sqlite") as cache:
        judge = _TableJudge("t", {"fn": Verdict.RELEVANT})
        first = relabel(rows, corpus, judge, ["rlhn", "hn_remove"], cache, show_progress_bar=False)
        assert judge.requests == [["fn", "neg"]] and len(cache) == 2
        again = relabel(rows, corpus, _TableJudge("t", {"fn": Verdict.RELEVANT}), ["rlhn"], cache,
                        show_progress_bar=False)  # fmt: skip
    counts = ("candidates_judged", "judged_pairs", "cache_hits", "judge_calls")
    assert [first.summary[k] for k in counts] == [3, 2, 1, 1]
    assert [again.summary[k] for k in counts] == [3, 0, 3, 0]
    assert first.summary["verdicts"] == {"not_relevant": 1, "relevant": 2}
    assert first.datasets["rlhn"][0]["labels"] == [1.0, 1.0, 1.0, 0.0]
    assert first.datasets["rlhn"][0]["label_source"] == ["qrels", "relabeled:t", "relabeled:t", "mined"]
    assert first.datasets["hn_remove"][0]["doc_ids"] == ["p", "n1"]
    assert first.summary["strategies"]["hn_remove"]["candidates_removed"] == 2
    assert again.datasets["rlhn"].to_list() == first.datasets["rlhn"].to_list()


def test_a_positive_listed_again_as_a_negative_is_not_judged_against_itself(tmp_path):
    """Row [p, n0, p, n1]: p is listed as a positive and again as a negative. It is a positive of the row (the highest
    label wins, as in the collator): only n0 and n1 are judged, and no strategy touches the copy of p, even a judge
    that would call p relevant."""
    rows, corpus = _one_row(["fn", "neg"])
    rows = datasets.Dataset.from_list(
        [{**rows[0], "doc_ids": ["p", "n0", "p", "n1"], "labels": [1.0, 0.0, 0.0, 0.0]}], features=ROW_FEATURES
    )
    table = {"fn": Verdict.RELEVANT, ARHN_POSITIVE: Verdict.RELEVANT}
    strategies = ["rlhn", "hn_remove", "remove", "arhn_rf"]
    judge = _ListMarkJudge("t", table)  # marks: "R" for fn (listed next to neg), None for the others
    with JudgmentCache(tmp_path / "c.sqlite") as cache:
        result = relabel(rows, corpus, judge, strategies, cache, show_progress_bar=False)
    assert judge.requests == [["fn", "neg"], ["fn", "neg"]]  # the verdicts, then the ARHN marks: p in neither
    assert result.judgments == [[None, "relevant", None, "not_relevant"]]
    assert result.marks == [[None, "R", None, None]]
    assert result.summary["candidates_judged"] == 2 and result.summary["verdicts"] == {"not_relevant": 1, "relevant": 1}
    expected = {"doc_ids": ["p", "n0", "p", "n1"], "labels": [1.0, 1.0, 0.0, 0.0],
                "label_source": ["qrels", "relabeled:t", "mined", "mined"]}  # fmt: skip
    for name in ("rlhn", "arhn_rf"):
        assert {k: result.datasets[name][0][k] for k in expected} == expected, name
    assert result.datasets["hn_remove"][0]["doc_ids"] == ["p", "p", "n1"]
    assert len(result.datasets["remove"]) == 0  # dropped for n0, not for p
    assert result.summary["strategies"]["rlhn"]["flagged"] == 1


def _two_lists_of_one_query():
    """Two rows of one query sharing the candidate "fn": one lists it next to "neg", the other next to "other"."""
    corpus = {"p": ARHN_POSITIVE, "n0": "fn", "n1": "neg", "n2": "other"}
    rows = datasets.Dataset.from_list(
        [{"query_id": "q", "query": QUERY, "doc_ids": ["p", "n0", other], "labels": [1.0, 0.0, 0.0],
          "teacher_scores": [], "label_source": []} for other in ("n1", "n2")],
        features=ROW_FEATURES,
    )  # fmt: skip
    return corpus, rows


@pytest.mark.parametrize("batch_size", [1, 2])
def test_a_listwise_verdict_belongs_to_the_list_it_was_given_in(tmp_path, batch_size):
    """Two rows of one query share "fn": in [fn, neg] the cheap judge flags neg, so the expensive one decides and
    flags fn; in [fn, other] nothing is escalated and fn stays not relevant. Each row keeps its own list's verdicts,
    on the first run and when everything comes from the cache."""
    corpus, rows = _two_lists_of_one_query()
    expected = [[None, "relevant", "not_relevant"], [None, "not_relevant", "not_relevant"]]
    with JudgmentCache(tmp_path / "c.sqlite") as cache:
        first = relabel(rows, corpus, _cascade(), ["rlhn"], cache, batch_size=batch_size, show_progress_bar=False)
        again = relabel(rows, corpus, _cascade(), ["rlhn"], cache, batch_size=batch_size, show_progress_bar=False)
    assert first.judgments == expected and again.judgments == expected and again.summary["judge_calls"] == 0
    assert [row["labels"] for row in again.datasets["rlhn"]] == [[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]]


class _ListMarkJudge(_TableJudge):
    """ARHN marks that depend on the list: "fn" is ranked above the positive ("R") only next to "neg"."""

    def arhn_labels(self, query, positives, candidates):
        self.requests.append(list(candidates))
        return ["R" if text == "fn" and "neg" in candidates else None for text in candidates]


def test_arhn_marks_belong_to_the_list_they_were_given_in(tmp_path):
    corpus, rows = _two_lists_of_one_query()
    with JudgmentCache(tmp_path / "c.sqlite") as cache:
        first = relabel(rows, corpus, _ListMarkJudge("m", {}), ["arhn_r"], cache, batch_size=1,
                        show_progress_bar=False)  # fmt: skip
        again = relabel(rows, corpus, _ListMarkJudge("m", {}), ["arhn_r"], cache, batch_size=1,
                        show_progress_bar=False)  # fmt: skip
    assert first.marks == again.marks == [[None, "R", None], [None, None, None]]
    assert again.summary["judge_calls"] == 0
    assert [row["labels"] for row in again.datasets["arhn_r"]] == [[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]]


@pytest.mark.parametrize(
    ("field", "values", "problem"),
    [
        ("label_source", ["qrels", "mined"], "2 values for 3 doc_ids"),
        ("teacher_scores", [0.5, 0.25], "2 values for 3 doc_ids"),
        ("labels", [1.0, 0.0], "2 values for 3 doc_ids"),
    ],
)
def test_a_row_whose_lists_do_not_match_its_doc_ids_is_refused_before_judging(tmp_path, field, values, problem):
    """Refused with its row and field before its batch is judged (not with an IndexError after every row was)."""
    rows, corpus = _one_row(["fn", "neg"])
    ok = {**rows[0], "query_id": "q0"}
    bad = {**rows[0], "query_id": "q1", field: values}
    rows = datasets.Dataset.from_list([ok, bad], features=ROW_FEATURES)
    judge = _TableJudge("t", {"fn": Verdict.RELEVANT})
    with JudgmentCache(tmp_path / "c.sqlite") as cache, pytest.raises(DataFormatError) as err:
        relabel(rows, corpus, judge, ["rlhn"], cache, show_progress_bar=False)
    assert (err.value.source, err.value.line, err.value.field, err.value.problem) == ("rows", 2, field, problem)
    assert judge.requests == []


def test_written_rows_are_strict_json_with_a_missing_score_as_null(tmp_path):
    import datasets

    from hf_robust_ir.data import load_training_data
    from hf_robust_ir.data.schema import ROW_FEATURES
    from hf_robust_ir.relabel.runner import write_jsonl

    rows = datasets.Dataset.from_list(
        [{"query_id": "q", "query": "q", "doc_ids": ["a", "b"], "labels": [1.0, 0.0],
          "teacher_scores": [float("nan"), 0.5], "label_source": ["qrels", "mined"]}],
        features=ROW_FEATURES,
    )  # fmt: skip
    write_jsonl(rows, tmp_path / "rows.jsonl")
    line = (tmp_path / "rows.jsonl").read_text()
    assert '"teacher_scores": [null, 0.5]' in line
    json.loads(line, parse_constant=lambda name: pytest.fail(f"{name} is not JSON"))
    teacher = load_training_data(tmp_path / "rows.jsonl", corpus={"a": "x", "b": "y"}).rows[0]["teacher_scores"]
    assert teacher[0] != teacher[0] and teacher[1] == 0.5  # read back as "no score"
