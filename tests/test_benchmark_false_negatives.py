"""benchmarks/false_negatives.py --combine: seeds pooled into mean ± std, paired injection cost, recovered fraction."""

from __future__ import annotations

import json

import pytest
from conftest import benchmark_module


@pytest.fixture()
def false_negatives():
    with benchmark_module("false_negatives") as module:
        yield module


def seed_report(seed: int, **ndcg: float) -> dict:
    judges = {"embedding": {"precision": 0.2 + seed / 10, "recall": 0.1, "f1": 0.15, "flagged": 10}}
    return {
        "settings": {"profile": "quick", "seed": seed, "lr": 5e-5},
        "results": {name: {"ndcg@10": value} for name, value in ndcg.items()},
        "zero_shot": {"ndcg@10": 0.3159},
        "judges": judges,
    }


def three_seeds() -> list[dict]:
    return [
        seed_report(0, infonce_clean=0.32, infonce_injected=0.31, rlhn=0.315, guide_masked=0.318),
        seed_report(1, infonce_clean=0.33, infonce_injected=0.325, rlhn=0.33, guide_masked=0.33),
        seed_report(2, infonce_clean=0.31, infonce_injected=0.295, rlhn=0.30, guide_masked=0.312),
    ]


def test_combine_pairs_costs_by_seed_and_recovers_from_the_means(false_negatives):
    combined = false_negatives.combine_seeds(three_seeds(), ["a.json", "b.json", "c.json"])
    # costs 0.010, 0.005, 0.015: mean 0.010, std (ddof 1) 0.005, t = 0.010 / (0.005 / sqrt 3) = 3.4641
    cost = combined["injection_cost"]
    assert cost["per_seed"] == {"0": 0.01, "1": 0.005, "2": 0.015}
    assert cost["mean"] == pytest.approx(0.01) and cost["std"] == pytest.approx(0.005)
    assert cost["t_statistic"] == pytest.approx(3.464, abs=1e-3) and cost["clear"] is True
    # means: clean 0.32, injected 0.31, guide_masked 0.32 (fraction 1.0), rlhn 0.315 (0.5)
    assert combined["results"]["guide_masked"]["ndcg@10"] == pytest.approx(0.32)
    # deviations -0.002, 0.010, -0.008: sqrt(1.68e-4 / 2) = 0.0091652, stored to 5 decimals
    assert combined["results"]["guide_masked"]["std"] == pytest.approx(0.00917, abs=1e-9)
    assert combined["best_strategy"] == "guide_masked"
    assert combined["recovered_fraction"] == pytest.approx(1.0)
    # per seed, same strategy: 0.008 / 0.010, 0.005 / 0.005, 0.017 / 0.015
    assert combined["recovered_fraction_per_seed"] == pytest.approx({"0": 0.8, "1": 1.0, "2": 1.1333}, abs=1e-4)
    assert combined["target"]["met"] is True
    # not training at all: (0.3159 - 0.31) / (0.32 - 0.31)
    assert combined["zero_shot_fraction"] == pytest.approx(0.59)
    assert combined["judges"]["embedding"]["precision"] == pytest.approx(0.3)
    assert combined["settings"] == {"profile": "quick", "lr": 5e-5} and combined["seeds"] == [0, 1, 2]


def test_a_seed_where_the_injection_costs_nothing_makes_the_cost_unclear(false_negatives):
    reports = three_seeds()
    reports[1]["results"]["infonce_injected"]["ndcg@10"] = 0.331  # seed 1 gains from the injection
    combined = false_negatives.combine_seeds(reports, ["a.json", "b.json", "c.json"])
    assert combined["injection_cost"]["clear"] is False
    assert combined["target"]["met"] is False  # a high fraction of an unclear cost does not count
    assert "1" not in combined["recovered_fraction_per_seed"]


def test_an_injection_that_costs_nothing_on_the_means_leaves_nothing_to_recover(false_negatives):
    reports = three_seeds()
    for report in reports:
        report["results"]["infonce_injected"]["ndcg@10"] = report["results"]["infonce_clean"]["ndcg@10"]
    combined = false_negatives.combine_seeds(reports, ["a.json", "b.json", "c.json"])
    assert combined["injection_cost"]["mean"] == 0.0 and combined["injection_cost"]["clear"] is False
    assert "recovered_fraction" not in combined and combined["target"]["met"] is False
    assert "nothing to recover" in false_negatives.combined_markdown(combined, "cmd")


def test_combine_refuses_runs_with_other_settings_or_a_repeated_seed(false_negatives):
    reports = three_seeds()
    reports[2]["settings"]["lr"] = 2e-5
    with pytest.raises(ValueError, match=r"c\.json was made with other settings than a\.json: \['lr'\]"):
        false_negatives.combine_seeds(reports, ["a.json", "b.json", "c.json"])
    with pytest.raises(ValueError, match="the same seed appears twice"):
        false_negatives.combine_seeds([three_seeds()[0], three_seeds()[0]], ["a.json", "b.json"])


def test_combine_command_writes_json_and_markdown(false_negatives, tmp_path):
    sources = []
    for report in three_seeds():
        path = tmp_path / f"seed{report['settings']['seed']}.json"
        path.write_text(json.dumps(report))
        sources.append(str(path))
    out = tmp_path / "combined.json"
    assert false_negatives.main(["--combine", *sources, "--out", str(out)]) == 0
    combined = json.loads(out.read_text())
    assert combined["combined_from"] == sources and combined["recovered_fraction"] == pytest.approx(1.0)
    table = out.with_suffix(".md").read_text()
    assert "| guide_masked | 0.3200 ± 0.0092 | 0.3180, 0.3300, 0.3120 |" in table
    assert "t = 3.46" in table
    assert "not trained at all, stands at 0.59 of the cost" in table


def test_judge_free_arms_run_end_to_end_on_a_slice_of_nfcorpus(
    false_negatives, real_model_path, nfcorpus_dir, tmp_path
):
    out = tmp_path / "fn.json"
    args = ["--model", real_model_path, "--data_dir", str(nfcorpus_dir.parent), "--out", str(out)]
    args += ["--train_queries", "16", "--max_corpus", "50", "--max_eval_queries", "8", "--negative_pool", "2"]
    args += ["--max_length", "32", "--eval_max_length", "32", "--batch_size", "8", "--epochs", "1"]
    args += ["--arms", "infonce_clean", "infonce_injected", "guide_masked", "oracle_hn_remove"]
    args += ["--injection_order", "teacher_score"]
    assert false_negatives.main(args) == 0
    report = json.loads(out.read_text())
    assert list(report["results"]) == ["infonce_clean", "infonce_injected", "guide_masked", "oracle_hn_remove"]
    assert all(0.0 <= run["ndcg@10"] <= 1.0 for run in report["results"].values())
    assert report["judges"] == {}  # no relabeling strategy asked for, so no judge ran
    assert report["data"]["injection"]["changes"] > 0
    assert report["settings"]["injection_order"] == "teacher_score"
    # the hidden positives are each query's best-scored by the base model: none scores below a kept positive
    injected = false_negatives.load_rows(tmp_path / "fn_work" / "rows_injected")
    for row in injected:
        moved = [s for s, source in zip(row["teacher_scores"], row["label_source"]) if source == "noise"]
        kept = [s for s, label in zip(row["teacher_scores"], row["labels"]) if label > 0]
        if moved:
            assert min(moved) >= max(kept)
    # the oracle arm's rows: the injected rows less exactly the moved candidates, everything else aligned
    oracle = false_negatives.without_moved(injected)
    for before, after in zip(injected, oracle):
        kept = [i for i, source in enumerate(before["label_source"]) if source != "noise"]
        for name in ("doc_ids", "labels", "teacher_scores", "label_source"):
            assert after[name] == [before[name][i] for i in kept]
    assert (
        sum(len(r["doc_ids"]) for r in injected) - sum(len(r["doc_ids"]) for r in oracle)
        == (report["data"]["injection"]["changes"])
    )
    assert report["injection_cost"] == pytest.approx(
        report["results"]["infonce_clean"]["ndcg@10"] - report["results"]["infonce_injected"]["ndcg@10"], abs=1e-5
    )
