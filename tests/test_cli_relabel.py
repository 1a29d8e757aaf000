"""`hf-robust-ir relabel`: recipe parsing and errors, outputs, the embedding judge end to end, push_to_hub."""

import json

import datasets
import pytest

from hf_robust_ir.cli import main
from hf_robust_ir.commands.relabel import parse_recipe
from hf_robust_ir.data.schema import DataFormatError

CORPUS = {
    "p0": "the capital of france is paris",
    "n0": "paris is the capital city of france",
    "n1": "bananas are yellow fruit",
    "p1": "water boils at one hundred degrees",
    "n2": "at sea level water boils at 100 degrees celsius",
    "n3": "the moon orbits the earth",
}


def _beir(tmp_path):
    folder = tmp_path / "beir"
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": d, "title": "", "text": t}) + "\n" for d, t in CORPUS.items())
    )
    (folder / "queries.jsonl").write_text(
        json.dumps({"_id": "q0", "text": "what is the capital of france"})
        + "\n"
        + json.dumps({"_id": "q1", "text": "at what temperature does water boil"})
        + "\n"
    )
    (folder / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq0\tp0\t1\nq0\tn1\t0\nq1\tp1\t1\n")
    return folder


def _recipe(tmp_path, text):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def test_recipe_errors_name_file_line_and_field(tmp_path):
    path = _recipe(tmp_path, "output_dir: out\nstrategies: [rlhn]\nmax_flagged: many\n")
    with pytest.raises(DataFormatError) as err:
        parse_recipe(str(path), [])
    assert err.value.line == 3 and err.value.field == "max_flagged" and str(path) in str(err.value)
    with pytest.raises(DataFormatError, match="line 2, field 'strategie'"):
        parse_recipe(str(_recipe(tmp_path, "output_dir: out\nstrategie: [rlhn]\n")), [])
    with pytest.raises(DataFormatError, match="unknown relabeling strategy"):
        parse_recipe(str(_recipe(tmp_path, "output_dir: out\nstrategies: [relabel_all]\n")), [])
    with pytest.raises(DataFormatError, match="hub_repo_id"):
        parse_recipe(str(_recipe(tmp_path, "output_dir: out\npush_to_hub: true\n")), [])
    args = parse_recipe(str(_recipe(tmp_path, "output_dir: out\n")), ["--max_flagged", "null", "--batch_size", "4"])
    assert args.max_flagged is None and args.batch_size == 4 and args.strategies == ["rlhn", "hn_remove", "remove"]


def test_cli_reports_bad_rows_with_line_and_field(tmp_path, capsys):
    beir = _beir(tmp_path)
    rows = tmp_path / "rows.jsonl"
    good = {"query_id": "q0", "query": "x", "doc_ids": ["p0", "n0"], "labels": [1, 0]}
    bad = {"query_id": "q1", "query": "y", "doc_ids": ["p1", "missing"], "labels": [1, 0]}
    rows.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    recipe = _recipe(
        tmp_path, f"output_dir: {tmp_path / 'out'}\nrows: {rows}\ndata_dir: {beir}\njudge: {{type: embedding}}\n"
    )
    assert main(["relabel", "--config", str(recipe)]) == 2
    assert "line 2, field 'doc_ids'" in capsys.readouterr().err


@pytest.fixture()
def embedding_judge_available():
    pytest.importorskip("hf_robust_ir.relabel.judges")


def test_relabel_with_the_embedding_judge(tmp_path, capsys, tiny_model_path, embedding_judge_available, monkeypatch):
    beir = _beir(tmp_path)
    out = tmp_path / "out"
    recipe = _recipe(
        tmp_path,
        f"judge:\n  type: embedding\n  model: {tiny_model_path}\n  margin: 1.0\n"
        f"strategies: [rlhn, hn_remove, remove]\nmax_flagged: 8\n"
        f"data_dir: {beir}\nmining_model: {tiny_model_path}\nnum_negatives: 2\nmining_range_max: 3\n"
        f"output_dir: {out}\nshow_progress_bar: false\n",
    )
    assert main(["relabel", "--config", str(recipe)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["queries"] == 2 and summary["judge"]["name"] == "embedding"
    assert summary["candidates_judged"] == summary["judged_pairs"] > 0
    assert set(summary["strategies"]) == {"rlhn", "hn_remove", "remove"}
    assert json.loads((out / "summary.json").read_text())["strategies"] == summary["strategies"]
    assert (out / "judgments.sqlite").exists()
    for name in ("rlhn", "hn_remove", "remove"):
        on_disk = datasets.load_from_disk(str(out / name)).to_list()
        assert on_disk == [json.loads(line) for line in (out / f"{name}.jsonl").read_text().splitlines()]
    # the rows load back as training data
    from hf_robust_ir.data import load_training_data

    assert len(load_training_data(out / "rlhn.jsonl", corpus=CORPUS).rows) == summary["strategies"]["rlhn"]["rows"]
    # hn_remove's rows keep what it dropped as excluded documents, through the file and into training
    dropped = summary["strategies"]["hn_remove"]["candidates_removed"]
    removed = load_training_data(out / "hn_remove.jsonl", corpus=CORPUS).rows
    assert dropped > 0 and sum(len(ids) for ids in removed["excluded_doc_ids"]) == dropped

    # rerun: everything from the cache; push_to_hub goes through datasets / huggingface_hub (mocked here)
    pushed, uploaded = [], []
    monkeypatch.setattr(datasets.Dataset, "push_to_hub", lambda self, repo, **kw: pushed.append((repo, kw)))
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.HfApi, "upload_file", lambda self, **kw: uploaded.append(kw))
    overrides = ["--push_to_hub", "true", "--hub_repo_id", "me/relabeled"]
    assert main(["relabel", "--config", str(recipe), *overrides]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["judge_calls"] == 0 and summary["cache_hits"] == summary["candidates_judged"]
    assert [(repo, kw["config_name"], kw["private"]) for repo, kw in pushed] == [
        ("me/relabeled", name, True) for name in ("rlhn", "hn_remove", "remove")
    ]
    assert uploaded[0]["repo_id"] == "me/relabeled" and uploaded[0]["repo_type"] == "dataset"


def test_recipe_in_the_repository_parses(tmp_path):
    from pathlib import Path

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "relabel_rlhn_embedding.yaml"
    args = parse_recipe(str(recipe), ["--output_dir", str(tmp_path)])
    assert args.judge["type"] == "embedding"
    assert args.strategies == ["rlhn", "hn_remove", "remove"] and args.max_flagged == 8


def test_a_bad_judge_stops_before_the_rows_are_mined(tmp_path, capsys, tiny_model_path, monkeypatch):
    """Mining takes minutes on a real corpus: the judge is built (and a bad one refused) first."""
    import hf_robust_ir.mining

    def no_mining(*args, **kwargs):
        raise AssertionError("mined before the judge was built")

    monkeypatch.setattr(hf_robust_ir.mining, "mine_hard_negatives", no_mining)
    missing = tmp_path / "no-such-judge"
    recipe = _recipe(
        tmp_path,
        f"judge:\n  type: embedding\n  model: {missing}\n"
        f"data_dir: {_beir(tmp_path)}\nmining_model: {tiny_model_path}\nnum_negatives: 2\n"
        f"output_dir: {tmp_path / 'o'}\n",
    )
    assert main(["relabel", "--config", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "no-such-judge" in err and "mined before" not in err


@pytest.mark.parametrize(
    ("text", "line", "field", "problem"),
    [
        ("batch_size: 0\n", 2, "batch_size", "must be >= 1, got 0"),
        ("max_candidates: -1\n", 2, "max_candidates", "must be >= 1, got -1"),
        ("max_flagged: -1\n", 2, "max_flagged", "must be >= 0, got -1"),
    ],
)
def test_counts_out_of_range_are_refused_with_their_line(tmp_path, text, line, field, problem):
    """batch_size 0 looped forever, max_candidates -1 left the last negative unjudged, max_flagged -1 dropped every
    query."""
    with pytest.raises(DataFormatError) as err:
        parse_recipe(str(_recipe(tmp_path, "output_dir: out\n" + text)), [])
    assert (err.value.line, err.value.field, err.value.problem) == (line, field, problem)
    assert parse_recipe(str(_recipe(tmp_path, "output_dir: out\nmax_flagged: 0\n")), []).max_flagged == 0


@pytest.mark.parametrize(
    ("text", "line", "field", "problem"),
    [
        ("strategies: []\n", 5, "strategies", "no relabeling strategy given"),
        ("strategies: [threshold]\nmax_flagged: null\n", 6, "max_flagged", "strategy 'threshold' drops only queries"),
        ("strategies: [rlhn, arhn_r]\n", 2, "judge", "strategies ['arhn_r'] need a judge that gives ARHN labels"),
    ],
)
def test_strategies_that_cannot_run_are_one_error_line_before_any_work(
    tmp_path, capsys, tiny_model_path, text, line, field, problem
):
    """An empty list, threshold without max_flagged and ARHN with a judge without ARHN labels ended in a traceback
    (exit status 1) after the rows were loaded and the output folder made."""
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"query_id": "q0", "query": "x", "doc_ids": ["p0", "n0"], "labels": [1, 0]}) + "\n")
    out = tmp_path / "out"
    recipe = _recipe(
        tmp_path,
        f"output_dir: {out}\njudge:\n  type: embedding\n  model: {tiny_model_path}\n{text}"
        f"rows: {rows}\ndata_dir: {_beir(tmp_path)}\nshow_progress_bar: false\n",
    )
    assert main(["relabel", "--config", str(recipe)]) == 2
    captured = capsys.readouterr()
    error_lines = [entry for entry in captured.err.splitlines() if entry.startswith("error:")]
    assert error_lines == [error_lines[0]] and f"{recipe}, line {line}, field '{field}': {problem}" in error_lines[0]
    assert captured.out == "" and "Traceback" not in captured.err and not out.exists()


def test_show_progress_bar_false_silences_the_bars_of_datasets_too(tmp_path, capsys, tiny_model_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"query_id": "q0", "query": "x", "doc_ids": ["p0", "n0"], "labels": [1, 0]}) + "\n")
    text = f"judge:\n  type: embedding\n  model: {tiny_model_path}\nrows: {rows}\ndata_dir: {_beir(tmp_path)}\n"
    loud = _recipe(tmp_path, f"output_dir: {tmp_path / 'loud'}\n{text}")
    assert main(["relabel", "--config", str(loud)]) == 0
    assert "Saving the dataset" in capsys.readouterr().err  # datasets draws its bar when saving the rows
    quiet = _recipe(tmp_path, f"output_dir: {tmp_path / 'quiet'}\n{text}show_progress_bar: false\n")
    assert main(["relabel", "--config", str(quiet)]) == 0
    err = capsys.readouterr().err
    assert "Saving the dataset" not in err and "Filter" not in err and "strategy rlhn" not in err
    assert datasets.is_progress_bar_enabled()  # restored for whatever runs next in the process


@pytest.mark.parametrize(
    ("text", "line", "field", "problem"),
    [
        ("mining_range_min: -5\n", 2, "mining_range_min", "must be >= 0, got -5"),
        (
            "mining_range_min: 50\nmining_range_max: 10\n",
            3,
            "mining_range_max",
            "must be > mining_range_min (50), got 10",
        ),
        (
            "mining_range_min: 10\nmining_range_max: 10\n",
            3,
            "mining_range_max",
            "must be > mining_range_min (10), got 10",
        ),
    ],
)
def test_a_mining_range_that_holds_no_rank_is_refused_with_its_line(tmp_path, text, line, field, problem):
    """It was refused by the miner only after the judge and the mining model loaded, naming neither file nor line."""
    with pytest.raises(DataFormatError) as err:
        parse_recipe(str(_recipe(tmp_path, "output_dir: out\n" + text)), [])
    assert (err.value.line, err.value.field, err.value.problem) == (line, field, problem)
    with pytest.raises(DataFormatError) as err:  # an override has no line in the file
        parse_recipe(str(_recipe(tmp_path, "output_dir: out\nmining_range_max: 5\n")), ["--mining_range_max", "0"])
    assert (err.value.line, err.value.field) == (None, "mining_range_max")
    assert parse_recipe(str(_recipe(tmp_path, "output_dir: out\nmining_range_max: 1\n")), []).mining_range_max == 1


@pytest.mark.parametrize("override", [False, True])
def test_a_negative_max_retries_is_refused_with_the_judge_line(tmp_path, capsys, override):
    """It sent no request at all: the run wrote datasets in which no negative was ever judged."""
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"query_id": "q0", "query": "x", "doc_ids": ["p0", "n0"], "labels": [1, 0]}) + "\n")
    out = tmp_path / "out"
    recipe = _recipe(
        tmp_path,
        f"output_dir: {out}\nrows: {rows}\ndata_dir: {_beir(tmp_path)}\n"
        f"judge:\n  type: openai\n  base_url: http://127.0.0.1:9/v1\n  model: m\n  max_retries: -1\n"
        f"show_progress_bar: false\n",
    )
    overrides = ["--judge", "{type: openai, base_url: 'http://127.0.0.1:9/v1', model: m, max_retries: -1}"]
    assert main(["relabel", "--config", str(recipe), *(overrides if override else [])]) == 2
    captured = capsys.readouterr()
    where = "command line" if override else f"{recipe}, line 4"  # an override is named as the command line
    assert captured.err.strip().splitlines()[-1] == (
        f"error: {where}, field 'judge': max_retries must be an integer >= 0, got -1"
    )
    assert captured.out == "" and "Traceback" not in captured.err and not out.exists()
