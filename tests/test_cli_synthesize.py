"""`hf-robust-ir synthesize`: the BEIR folder it writes, resuming after an interruption, recipe errors."""

import json
import logging

import pytest
from test_cli_relabel import _beir

from hf_robust_ir.commands.synthesize import SynthesizeArguments, parse_recipe, synthesize
from hf_robust_ir.data import load_beir
from hf_robust_ir.data.schema import DataFormatError


class GradeEcho:
    """A chat backend test double: answers "grade G passage for <query>"; fails on call number ``fail_on``.

    ``no_answer`` maps a query, or a ``(query, grade)`` pair, to the failed reply it gets instead: ``None`` (a failed
    request, as the OpenAI backend gives after its retries) or an empty answer."""

    def __init__(self, fail_on=None, no_answer=None):
        self.calls, self.fail_on, self.queries = 0, fail_on, []
        self.no_answer = no_answer or {}

    def complete(self, batch, max_new_tokens):
        self.calls += 1
        if self.calls == self.fail_on:
            raise KeyboardInterrupt
        out = []
        for messages in batch:
            text = messages[-1]["content"]
            grade = int(text.split("relevance grade ")[1][0])
            query = text.split("<question>")[1].split("</question>")[0].strip()
            self.queries.append(query)
            failed = next((k for k in ((query, grade), query) if k in self.no_answer), None)
            out.append(self.no_answer[failed] if failed is not None else f"grade {grade} passage for {query}")
        return out

    def config(self):
        return {"backend": "echo"}


def test_writes_a_beir_folder_with_graded_qrels_and_resumes(tmp_path):
    beir = _beir(tmp_path)
    (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\tn2\t1\n")
    args = SynthesizeArguments(
        output_dir=str(tmp_path / "out"), grades=[0, 3], chunk_queries=1, batch_size=4, show_progress_bar=False
    )
    with pytest.raises(KeyboardInterrupt):
        synthesize(args, beir, backend=GradeEcho(fail_on=2))  # q0 finished, q1 interrupted
    partial = tmp_path / "out" / "generated.partial.jsonl"
    partial.write_text(partial.read_text() + '{"query_id": "q1", "ro')  # q1's record cut mid-write
    backend = GradeEcho()
    summary = synthesize(args, beir, backend=backend)
    assert backend.queries == ["at what temperature does water boil"] * 2  # only q1 is asked again
    header, *records = [json.loads(line) for line in partial.read_text().splitlines()]
    assert header == {"generator": summary["generator"], "split": "train", "queries": header["queries"]}
    assert [record["query_id"] for record in records] == ["q0", "q1"]
    again = GradeEcho()
    assert synthesize(args, beir, backend=again)["rows"] == 2 and again.queries == []  # nothing is asked a third time
    assert summary["rows"] == 2 and summary["synthetic_documents"] == 4
    assert summary["synthetic_documents_per_grade"] == {"0": 2, "3": 2}
    qrels = (tmp_path / "out" / "qrels" / "train.tsv").read_text().splitlines()
    assert qrels == [
        "query-id\tcorpus-id\tscore",
        "q0\tsynthetic:q0:g0:0\t0",
        "q0\tsynthetic:q0:g3:0\t3",
        "q0\tp0\t3",
        "q1\tsynthetic:q1:g0:0\t0",
        "q1\tsynthetic:q1:g3:0\t3",
        "q1\tp1\t3",
    ]
    train = load_beir(tmp_path / "out", split="train")  # the folder loads like any BEIR folder
    assert train.corpus["synthetic:q1:g3:0"] == "grade 3 passage for at what temperature does water boil"
    assert train.corpus["p0"] == "the capital of france is paris" and train.qrels["q0"]["synthetic:q0:g0:0"] == 0
    test = load_beir(tmp_path / "out", split="test")
    assert test.qrels == {"q1": {"n2": 1}}  # the real test split, unchanged, searched over the source corpus alone
    assert test.corpus == load_beir(beir, split="test").corpus and len(train.corpus) == len(test.corpus) + 4
    rows = [json.loads(line) for line in (tmp_path / "out" / "rows.jsonl").read_text().splitlines()]
    assert rows[0]["label_source"] == ["synthetic", "synthetic", "qrels"]


def test_recipe_errors(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("output_dir: out\nbackend: {type: gpt}\n")
    with pytest.raises(DataFormatError, match="line 2, field 'backend'"):
        parse_recipe(str(recipe), [])
    recipe.write_text("output_dir: out\nbackend: {type: hf}\ngrade: [1]\n")
    with pytest.raises(DataFormatError, match="line 3, field 'grade'"):
        parse_recipe(str(recipe), [])


def test_a_resume_with_other_generation_settings_is_refused(tmp_path):
    beir = _beir(tmp_path)
    args = SynthesizeArguments(
        output_dir=str(tmp_path / "out"), grades=[0, 3], chunk_queries=1, batch_size=4, show_progress_bar=False
    )
    with pytest.raises(KeyboardInterrupt):
        synthesize(args, beir, backend=GradeEcho(fail_on=2))  # q0 finished with grades 0 and 3
    partial = tmp_path / "out" / "generated.partial.jsonl"
    written = partial.read_text()
    args.grades = [0, 1, 2, 3]
    backend = GradeEcho()
    with pytest.raises(ValueError, match=r"generated\.partial\.jsonl line 1: .*other settings"):
        synthesize(args, beir, backend=backend)
    assert backend.queries == [] and partial.read_text() == written
    args.grades = [0, 3]  # the settings of the interrupted run resume it
    assert synthesize(args, beir, backend=backend)["synthetic_documents_per_grade"] == {"0": 2, "3": 2}
    assert backend.queries == ["at what temperature does water boil"] * 2


@pytest.mark.parametrize(
    "field, value",
    [("chunk_queries", -1), ("chunk_queries", 0), ("batch_size", 0), ("max_queries", -1), ("max_new_tokens", 0)],
)
def test_counts_below_one_are_refused_with_their_line(tmp_path, field, value):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"output_dir: out\nbackend: {{type: hf, model: m}}\n{field}: {value}\n")
    with pytest.raises(DataFormatError, match=f"r.yaml, line 3, field '{field}': must be >= 1, got {value}"):
        parse_recipe(str(recipe), [])
    with pytest.raises(ValueError, match=f"{field} must be >= 1, got {value}"):
        SynthesizeArguments(output_dir=str(tmp_path / "out"), **{field: value})


def test_a_resume_over_other_queries_is_refused(tmp_path):
    """Another data folder with the same query ids (another dataset) in the same output_dir: the finished queries'
    passages were written for other query texts and must not be mixed in."""
    import shutil

    beir = _beir(tmp_path)
    args = SynthesizeArguments(
        output_dir=str(tmp_path / "out"), grades=[0, 3], chunk_queries=1, batch_size=4, show_progress_bar=False
    )
    with pytest.raises(KeyboardInterrupt):
        synthesize(args, beir, backend=GradeEcho(fail_on=2))  # q0 finished
    partial = tmp_path / "out" / "generated.partial.jsonl"
    written = partial.read_text()
    other = tmp_path / "other"
    shutil.copytree(beir, other)
    (other / "queries.jsonl").write_text(
        json.dumps({"_id": "q0", "text": "who wrote hamlet"})
        + "\n"
        + json.dumps({"_id": "q1", "text": "how far is the moon"})
        + "\n"
    )
    backend = GradeEcho()
    with pytest.raises(ValueError, match=r"generated\.partial\.jsonl line 1: written for other queries"):
        synthesize(args, other, backend=backend)
    assert backend.queries == [] and partial.read_text() == written
    same = tmp_path / "same"  # a copy of the first folder elsewhere: the same queries, resumed
    shutil.copytree(beir, same)
    summary = synthesize(args, same, backend=backend)
    assert backend.queries == ["at what temperature does water boil"] * 2 and summary["rows"] == 2
    header, *records = partial.read_text().splitlines()
    older = {k: v for k, v in json.loads(header).items() if k != "queries"}  # written before the queries' digest
    partial.write_text("\n".join([json.dumps(older), *records]) + "\n")
    again = GradeEcho()
    assert synthesize(args, beir, backend=again)["rows"] == 2 and again.queries == []


FRANCE, WATER = "what is the capital of france", "at what temperature does water boil"


def _rows(out):
    return [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]


def test_a_query_whose_passages_all_failed_is_asked_again_by_the_next_run(tmp_path, caplog):
    """Every request of q1 fails (no answer for grade 0, an empty one for grade 3): q1 is not recorded as done, and the
    next run, with a working backend, writes it. q0 lost only its grade-0 passage: it is done with its grade-3 one."""
    beir = _beir(tmp_path)
    out = tmp_path / "out"
    args = SynthesizeArguments(
        output_dir=str(out), grades=[0, 3], chunk_queries=1, batch_size=4, show_progress_bar=False
    )
    down = GradeEcho(no_answer={(FRANCE, 0): None, (WATER, 0): None, (WATER, 3): "  "})
    with caplog.at_level(logging.WARNING, logger="hf_robust_ir.synthesize"):
        first = synthesize(args, beir, backend=down)
    assert down.queries == [FRANCE, FRANCE, WATER, WATER]
    assert (first["queries"], first["rows"], first["queries_to_retry"], first["failed_passages"]) == (2, 1, 1, 1)
    assert first["synthetic_documents"] == 1 and first["synthetic_documents_per_grade"] == {"3": 1}
    assert "1 of 2 queries got no passage" in caplog.text and "asks for them again" in caplog.text
    q0 = {
        "query_id": "q0",
        "query": FRANCE,
        "doc_ids": ["synthetic:q0:g3:0", "p0"],
        "labels": [3.0, 3.0],
        "teacher_scores": [],
        "label_source": ["synthetic", "qrels"],
    }
    assert _rows(out) == [q0]
    assert (out / "qrels" / "train.tsv").read_text().splitlines()[1:] == ["q0\tsynthetic:q0:g3:0\t3", "q0\tp0\t3"]
    header, *records = [json.loads(line) for line in (out / "generated.partial.jsonl").read_text().splitlines()]
    assert records == [
        {"query_id": "q0", "row": q0, "documents": {"synthetic:q0:g3:0": f"grade 3 passage for {FRANCE}"}}
    ]

    up = GradeEcho()
    second = synthesize(args, beir, backend=up)
    assert up.queries == [WATER, WATER]  # q1 alone is asked again; q0's failed passage is not
    assert (second["rows"], second["queries_to_retry"], second["failed_passages"]) == (2, 0, 1)
    assert second["synthetic_documents_per_grade"] == {"0": 1, "3": 2}
    assert _rows(out) == [
        q0,
        {
            "query_id": "q1",
            "query": WATER,
            "doc_ids": ["synthetic:q1:g0:0", "synthetic:q1:g3:0", "p1"],
            "labels": [0.0, 3.0, 3.0],
            "teacher_scores": [],
            "label_source": ["synthetic", "synthetic", "qrels"],
        },
    ]
    assert (out / "qrels" / "train.tsv").read_text().splitlines()[1:] == [
        "q0\tsynthetic:q0:g3:0\t3",
        "q0\tp0\t3",
        "q1\tsynthetic:q1:g0:0\t0",
        "q1\tsynthetic:q1:g3:0\t3",
        "q1\tp1\t3",
    ]
    assert load_beir(out, split="train").corpus["synthetic:q1:g0:0"] == f"grade 0 passage for {WATER}"
    again = GradeEcho()
    assert synthesize(args, beir, backend=again)["rows"] == 2 and again.queries == []


def test_a_query_recorded_without_passages_by_an_earlier_version_is_asked_again(tmp_path):
    """Earlier versions wrote ``"row": null`` for a query whose requests all failed, and skipped it on every rerun."""
    beir = _beir(tmp_path)
    out = tmp_path / "out"
    args = SynthesizeArguments(output_dir=str(out), grades=[3], chunk_queries=1, batch_size=4, show_progress_bar=False)
    synthesize(args, beir, backend=GradeEcho(no_answer={WATER: None}))
    partial = out / "generated.partial.jsonl"
    partial.write_text(partial.read_text() + json.dumps({"query_id": "q1", "row": None, "documents": {}}) + "\n")
    backend = GradeEcho()
    summary = synthesize(args, beir, backend=backend)
    assert backend.queries == [WATER] and (summary["rows"], summary["queries_to_retry"]) == (2, 0)
    assert [(row["query_id"], row["doc_ids"]) for row in _rows(out)] == [
        ("q0", ["synthetic:q0:g3:0", "p0"]),
        ("q1", ["synthetic:q1:g3:0", "p1"]),
    ]
