"""Teacher scoring: values against the teacher's own outputs, resuming after an interruption, `hf-robust-ir score`."""

import json

import datasets
import numpy as np
import pytest
import torch
from conftest import tiny_bert_config
from transformers import AutoTokenizer, BertForSequenceClassification

import hf_robust_ir.scoring as scoring
from hf_robust_ir.cli import main
from hf_robust_ir.modeling import BiEncoder, CrossEncoder
from hf_robust_ir.scoring import load_teacher, score_rows

CORPUS = {
    "p0": "the capital of france is paris",
    "n0": "paris is the capital city of france",
    "n1": "bananas are yellow fruit",
    "p1": "water boils at one hundred degrees",
    "n2": "at sea level water boils at 100 degrees celsius",
    "n3": "the moon orbits the earth",
}
QUERIES = {"q0": "what is the capital of france", "q1": "at what temperature does water boil", "q2": "moon"}


def _rows() -> datasets.Dataset:
    return datasets.Dataset.from_list(
        [
            {"query_id": "q0", "query": QUERIES["q0"], "doc_ids": ["p0", "n0", "n1"], "labels": [1.0, 0.0, 0.0]},
            {"query_id": "q1", "query": QUERIES["q1"], "doc_ids": ["p1", "n2", "n0"], "labels": [1.0, 0.0, 0.0]},
            {"query_id": "q2", "query": QUERIES["q2"], "doc_ids": ["n3", "p0"], "labels": [1.0, 0.0]},
        ]
    )


@pytest.fixture(scope="module")
def reranker_path(tiny_model_path, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("tiny-reranker")
    torch.manual_seed(0)
    BertForSequenceClassification(tiny_bert_config(num_labels=1, initializer_range=0.2)).save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_model_path).save_pretrained(path)
    return str(path)


def test_bi_encoder_teacher_scores_are_its_query_document_products(tiny_model_path):
    teacher = load_teacher(tiny_model_path)
    assert isinstance(teacher, BiEncoder)
    scored = score_rows(_rows(), CORPUS, teacher, batch_size=2, chunk_size=2, show_progress=False)
    for row in scored:
        query = teacher.encode_queries([row["query"]])[0]
        documents = teacher.encode_documents([CORPUS[d] for d in row["doc_ids"]])
        np.testing.assert_allclose(row["teacher_scores"], documents @ query, atol=1e-5)
    assert scored["labels"] == _rows()["labels"]  # nothing but the teacher scores changes


def test_cross_encoder_teacher_scores_are_its_logits(reranker_path):
    teacher = load_teacher(reranker_path)
    assert isinstance(teacher, CrossEncoder)
    rows = _rows().add_column("teacher_scores", [[9.0, 9.0, 9.0], [9.0, 9.0, 9.0], [9.0, 9.0]])
    scored = score_rows(rows, CORPUS, teacher, batch_size=4, show_progress=False)
    for row in scored:
        expected = teacher.predict([(row["query"], CORPUS[d]) for d in row["doc_ids"]])
        np.testing.assert_allclose(row["teacher_scores"], expected, atol=1e-5)  # old scores replaced
    assert load_teacher(reranker_path, kind="bi_encoder").__class__ is BiEncoder
    with pytest.raises(ValueError, match="teacher kind"):
        load_teacher(reranker_path, kind="llm")


def test_interrupted_scoring_resumes_without_scoring_a_row_twice(tiny_model_path, tmp_path, monkeypatch):
    teacher = load_teacher(tiny_model_path)
    reference = score_rows(_rows(), CORPUS, teacher, chunk_size=1, show_progress=False)
    progress = tmp_path / "progress.jsonl"
    calls: list[list[str]] = []
    real = scoring.score_candidates

    def failing_on_second_chunk(teacher, queries, candidates, **kwargs):
        calls.append(list(queries))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(teacher, queries, candidates, **kwargs)

    monkeypatch.setattr(scoring, "score_candidates", failing_on_second_chunk)
    with pytest.raises(KeyboardInterrupt):
        score_rows(_rows(), CORPUS, teacher, chunk_size=1, progress_file=progress, show_progress=False)
    header, *records = [json.loads(line) for line in progress.read_text().splitlines()]
    assert set(header) == {"teacher", "bf16", "settings"} and [r["query_id"] for r in records] == ["q0"]
    progress.write_text(progress.read_text() + '{"index": 1, "query_id": "q1", "sco')  # a line cut mid-write
    calls.clear()
    monkeypatch.setattr(scoring, "score_candidates", lambda *a, **k: (calls.append(list(a[1])), real(*a, **k))[1])
    resumed = score_rows(_rows(), CORPUS, teacher, chunk_size=1, progress_file=progress, show_progress=False)
    assert calls == [[QUERIES["q1"]], [QUERIES["q2"]]]  # q0 is not scored again
    lines = progress.read_text().splitlines()  # the cut line is gone, not glued to the next record
    assert [json.loads(line).get("query_id") for line in lines] == [None, "q0", "q1", "q2"]
    np.testing.assert_allclose(
        np.concatenate(resumed["teacher_scores"]), np.concatenate(reference["teacher_scores"]), atol=1e-6
    )
    # a progress file of other rows, candidates, teacher or precision is refused, not mixed in
    with pytest.raises(ValueError, match="not a row of these training rows"):
        score_rows(_rows().select([2, 1, 0]), CORPUS, teacher, progress_file=progress, show_progress=False)
    other_candidates = _rows().map(lambda row: {"doc_ids": row["doc_ids"][::-1]})
    with pytest.raises(ValueError, match="line 2: field 'doc_ids' does not match row 0"):
        score_rows(other_candidates, CORPUS, teacher, progress_file=progress, show_progress=False)
    edited = {**CORPUS, "n0": "paris is the largest city of france"}  # same ids, another text
    with pytest.raises(ValueError, match="line 2: field 'texts' does not match row 0: its query or candidate texts"):
        score_rows(_rows(), edited, teacher, progress_file=progress, show_progress=False)
    other_query = _rows().map(lambda row: {"query": row["query"].upper()})
    with pytest.raises(ValueError, match="line 2: field 'texts' does not match row 0"):
        score_rows(other_query, CORPUS, teacher, progress_file=progress, show_progress=False)
    with pytest.raises(ValueError, match="line 1: these scores come from another teacher, precision or settings"):
        score_rows(_rows(), CORPUS, teacher, progress_file=progress, bf16=True, show_progress=False)
    other_teacher = load_teacher(tiny_model_path)
    with torch.no_grad():
        next(other_teacher.parameters()).add_(0.01)
    with pytest.raises(ValueError, match="line 1: these scores come from another teacher"):
        score_rows(_rows(), CORPUS, other_teacher, progress_file=progress, show_progress=False)


def test_missing_document_is_named(tiny_model_path):
    rows = datasets.Dataset.from_list([{"query_id": "q", "query": "x", "doc_ids": ["nope"], "labels": [1.0]}])
    with pytest.raises(KeyError, match="'nope'"):
        score_rows(rows, CORPUS, load_teacher(tiny_model_path), show_progress=False)


class BrokenReranker:
    """A cross-encoder whose output overflowed: the logit of the second pair it is given is infinite (or NaN)."""

    def __init__(self, value: float):
        self.value = value

    def predict(self, pairs, batch_size=32, bf16=False):
        scores = np.zeros(len(pairs), np.float32)
        scores[1] = self.value
        return scores


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_nan_or_infinite_teacher_score_is_refused_naming_the_candidate(tmp_path, value):
    """The collator reads a NaN (or infinite) teacher score as "no score": a broken teacher's rows were written as
    scored and distillation quietly left those candidates out."""
    progress = tmp_path / "progress.jsonl"
    message = r"^teacher score of query 'q0', document 'n0' is NaN or infinite: the teacher's output is broken"
    with pytest.raises(ValueError, match=message):
        score_rows(_rows(), CORPUS, BrokenReranker(value), chunk_size=1, progress_file=progress, show_progress=False)
    assert len(progress.read_text().splitlines()) == 1  # the header only: the broken row is not kept for a resume


def _beir(tmp_path):
    folder = tmp_path / "beir"
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": d, "title": "", "text": t}) + "\n" for d, t in CORPUS.items())
    )
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in QUERIES.items()))
    (folder / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq0\tp0\t1\nq0\tn1\t0\nq1\tp1\t1\n")
    return folder


def test_cli_scores_rows_and_writes_them(tiny_model_path, reranker_path, tmp_path, capsys):
    beir = _beir(tmp_path)
    rows_file = tmp_path / "rows.jsonl"
    _rows().to_json(str(rows_file), lines=True)
    out = tmp_path / "scored"
    with pytest.raises(SystemExit):  # --output is required
        main(["score", "--data", str(beir), "--rows", str(rows_file), "--teacher", reranker_path])
    capsys.readouterr()
    assert (
        main(
            [
                "score",
                "--data",
                str(beir),
                "--rows",
                str(rows_file),
                "--teacher",
                reranker_path,
                "--output",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["rows"] == 3 and summary["candidates_scored"] == 8 and summary["teacher"] == "CrossEncoder"
    saved = datasets.load_from_disk(str(out))
    teacher = CrossEncoder.from_pretrained(reranker_path)
    np.testing.assert_allclose(
        saved[1]["teacher_scores"], teacher.predict([(QUERIES["q1"], CORPUS[d]) for d in ["p1", "n2", "n0"]]), atol=1e-5
    )
    lines = (out / "rows.jsonl").read_text().splitlines()
    assert len(lines) == 3 and "teacher_scores" in json.loads(lines[0])
    assert not (out / "teacher_scores.partial.jsonl").exists()
    # without --rows: the split's qrels; a missing teacher folder is an error naming the flag
    assert main(["score", "--data", str(beir), "--teacher", tiny_model_path, "--output", str(tmp_path / "q")]) == 0
    assert len(datasets.load_from_disk(str(tmp_path / "q"))) == 2
    assert main(["score", "--data", str(beir), "--teacher", str(tmp_path / "nothing"), "--output", str(out)]) == 2
    assert "--teacher" in capsys.readouterr().err


def test_trainer_refuses_a_teacher_loss_on_rows_without_teacher_scores(tiny_model_path, tmp_path):
    from hf_robust_ir.trainer import RetrievalTrainer, RetrievalTrainingArguments

    model = BiEncoder.from_pretrained(tiny_model_path)
    args = RetrievalTrainingArguments(
        output_dir=str(tmp_path), loss="kl_distillation", report_to="none", model_card=False, max_steps=1
    )
    with pytest.raises(ValueError, match="hf-robust-ir score"):
        RetrievalTrainer(model, args, train_dataset=_rows(), corpus=CORPUS)
    scored = score_rows(_rows(), CORPUS, load_teacher(tiny_model_path), show_progress=False)
    trainer = RetrievalTrainer(model, args, train_dataset=scored, corpus=CORPUS)
    assert trainer.loss.needs_teacher


def test_cli_scores_rows_over_a_folder_without_the_split_and_refuses_no_rows(tiny_model_path, tmp_path, capsys):
    beir = _beir(tmp_path)
    (beir / "qrels" / "train.tsv").rename(beir / "qrels" / "test.tsv")  # --split is for rows from qrels only
    (beir / "qrels" / "dev.tsv").write_text("query-id\tcorpus-id\tscore\nq0\tn1\t0\n")
    rows_file = tmp_path / "rows.jsonl"
    _rows().to_json(str(rows_file), lines=True)
    base = ["score", "--data", str(beir), "--teacher", tiny_model_path, "--quiet"]
    assert main([*base, "--rows", str(rows_file), "--output", str(tmp_path / "a")]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == 3
    assert len(datasets.load_from_disk(str(tmp_path / "a"))) == 3
    # no rows: save_to_disk would write a folder that load_from_disk (and `train`, `score --rows`) cannot read
    assert main([*base, "--split", "dev", "--output", str(tmp_path / "b")]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("error:") and "no rows" in captured.err


def test_cli_names_a_nan_teacher_score_in_one_line(tiny_model_path, tmp_path, capsys, monkeypatch):
    beir = _beir(tmp_path)
    monkeypatch.setattr(scoring, "load_teacher", lambda *args: BrokenReranker(float("nan")))
    argv = ["score", "--data", str(beir), "--teacher", tiny_model_path, "--output", str(tmp_path / "out"), "--quiet"]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "Traceback" not in captured.err
    assert captured.err.splitlines()[-1].startswith("error: teacher score of query 'q0', document 'n1' is NaN")
    assert not (tmp_path / "out" / "rows.jsonl").exists()


def test_a_resume_with_another_max_length_is_refused(tiny_model_path, tmp_path):
    progress = tmp_path / "progress.jsonl"
    score_rows(_rows().select([0]), CORPUS, load_teacher(tiny_model_path), progress_file=progress, show_progress=False)
    header = json.loads(progress.read_text().splitlines()[0])
    assert header["settings"]["query_max_length"] == header["settings"]["document_max_length"] == 128
    # the same weights reading 4 tokens score otherwise: their scores are not mixed with the finished row's
    short = load_teacher(tiny_model_path, max_length=4)
    with pytest.raises(ValueError, match="line 1: these scores come from another teacher, precision or settings"):
        score_rows(_rows().select([0]), CORPUS, short, progress_file=progress, show_progress=False)


@pytest.mark.parametrize(("flag", "value"), [("--max_length", "-1"), ("--max_length", "0"), ("--chunk_size", "0")])
def test_cli_refuses_counts_below_one_before_any_work(tiny_model_path, tmp_path, capsys, flag, value):
    """--max_length -1 ended in a tokenizer traceback and 0 was read as no limit at all (a text longer than the model's
    positions then fails mid-run); each left an output folder behind."""
    out = tmp_path / "out"
    argv = ["score", "--data", str(_beir(tmp_path)), "--teacher", tiny_model_path, "--output", str(out), "--quiet"]
    assert main([*argv, flag, value]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == f"error: {flag} must be >= 1, got {value}\n"
    assert not out.exists()
