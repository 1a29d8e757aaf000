"""`hf-robust-ir synthesize`: the BEIR folder it writes, resuming after an interruption, recipe errors."""

import json

import pytest
from test_cli_relabel import _beir

from hf_robust_ir.commands.synthesize import SynthesizeArguments, parse_recipe, synthesize
from hf_robust_ir.data import load_beir
from hf_robust_ir.data.schema import DataFormatError


class GradeEcho:
    """A chat backend test double: answers "grade G passage for <query>"; fails on call number ``fail_on``."""

    def __init__(self, fail_on=None):
        self.calls, self.fail_on, self.queries = 0, fail_on, []

    def complete(self, batch, max_new_tokens):
        self.calls += 1
        if self.calls == self.fail_on:
            raise KeyboardInterrupt
        out = []
        for messages in batch:
            text = messages[-1]["content"]
            grade = text.split("relevance grade ")[1][0]
            query = text.split("<question>")[1].split("</question>")[0].strip()
            self.queries.append(query)
            out.append(f"grade {grade} passage for {query}")
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
