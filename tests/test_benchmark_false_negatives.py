"""benchmarks/false_negatives.py --combine: seeds pooled into mean ± std, paired injection cost, recovered fraction."""

from __future__ import annotations

import json

import pytest
from conftest import benchmark_module
from test_mining import VectorEncoder


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


def test_combine_keeps_the_judge_each_seed_relabeled_with(false_negatives):
    """Each seed relabels with the judge of its best F1: seeds 0 and 1 picked `embedding`, seed 2 `cross_encoder`, so
    the pooled `rlhn` is not one judge's and says so; `remove` was judged by `embedding` in every seed."""
    reports = three_seeds()
    for report, judge in zip(reports, ("embedding", "embedding", "cross_encoder")):
        report["results"]["rlhn"]["judge"] = judge
        report["results"]["remove"] = {"ndcg@10": 0.3, "judge": "embedding"}
    combined = false_negatives.combine_seeds(reports, ["a.json", "b.json", "c.json"])
    rlhn = combined["results"]["rlhn"]
    assert rlhn["judge_per_seed"] == {"0": "embedding", "1": "embedding", "2": "cross_encoder"}
    assert "judge" not in rlhn and combined["results"]["remove"]["judge"] == "embedding"
    assert "judge" not in combined["results"]["guide_masked"]
    table = false_negatives.combined_markdown(combined, "cmd")
    assert "| rlhn (judges `embedding`, `embedding`, `cross_encoder`) | 0.3150 ± " in table
    assert "| remove (judge `embedding`) | 0.3000 ± 0.0000 |" in table


def test_combine_lists_the_runs_some_seeds_lack(false_negatives):
    """Seed 2 stopped before `rlhn` and only seed 0 ran `st_gist`: both are left out of the means, and said to be."""
    reports = three_seeds()
    del reports[2]["results"]["rlhn"]
    reports[0]["results"]["st_gist"] = {"ndcg@10": 0.33}
    combined = false_negatives.combine_seeds(reports, ["a.json", "b.json", "c.json"])
    assert set(combined["results"]) == {"infonce_clean", "infonce_injected", "guide_masked"}
    assert combined["left_out"] == {"rlhn": ["0", "1"], "st_gist": ["0"]}
    table = false_negatives.combined_markdown(combined, "cmd")
    assert "Left out, not run for every seed: `rlhn` (seeds 0, 1); `st_gist` (seeds 0)." in table


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


def test_score_separation_is_the_auc_of_the_base_model_scores_worked_by_hand(false_negatives):
    rows = {
        "teacher_scores": [[0.9, 0.8, 0.5, 0.7], [0.6, 0.65, 0.7], [0.3, 0.2]],
        "labels": [[1, 0, 0, 0], [1, 0, 0], [0, 0]],
        "label_source": [["qrels", "noise", "mined", "noise"], ["qrels", "noise", "mined"], None],
    }
    separation = false_negatives.score_separation(rows)
    assert separation["hidden_positives"] == 3 and separation["other_negatives"] == 4
    # hidden 0.8, 0.7, 0.65 against 0.5, 0.7, 0.3, 0.2: 4 + 3.5 (the tie 0.7, 0.7 counts half) + 3 of 12 pairs
    assert separation["auc_score"] == pytest.approx(10.5 / 12, abs=1e-4)
    # gaps to the best positive (the third row has none): hidden -0.1, -0.2, +0.05 against -0.4, +0.1: 3 of 6
    assert separation["auc_gap"] == pytest.approx(0.5)
    # the rule s > t, strict: hidden 0.8, 0.7, 0.65 against 0.5, 0.7, 0.3, 0.2
    assert separation["base_rate"] == pytest.approx(3 / 7, abs=1e-4)
    assert separation["score_threshold"] == {
        "0.3": {"flagged": 5, "precision": 0.6, "recall": 1.0},
        "0.4": {"flagged": 5, "precision": 0.6, "recall": 1.0},
        "0.5": {"flagged": 4, "precision": 0.75, "recall": 1.0},
        "0.6": {"flagged": 4, "precision": 0.75, "recall": 1.0},
        "0.7": {"flagged": 1, "precision": 1.0, "recall": 0.3333},
    }


def side_by_side_runs() -> list[dict]:
    """Seed 0 of the full profile as three processes would leave it: the two InfoNCE arms, then rlhn with a judge."""
    settings = {"profile": "full", "seed": 0, "lr": 5e-5, "injection_rate": 0.5, "epochs": 3.0, "batch_size": 32,
                "hard_negatives": 1, "max_length": 256}  # fmt: skip

    def run(arm: str, ndcg: float, **extra_settings) -> dict:
        return {
            "settings": {**settings, **extra_settings},
            "zero_shot": {"ndcg@10": 0.3159},
            # each process prepared the same rows in its own time
            "data": {"train_queries": 1752, "injection": {"changes": 4463}, "prepare_seconds": 300.0 + ndcg},
            "results": {arm: {"ndcg@10": ndcg, "train_seconds": 6000.0 + ndcg}},
            "judges": {},
            "commands": [{"command": f"python benchmarks/false_negatives.py --arms {arm}"}],
        }

    judged = run("rlhn", 0.32, no_cross_encoder=True, strategy_judge="embedding")
    judged["results"]["rlhn"]["judge"] = "embedding"
    judged["judges"] = {"embedding": {"precision": 0.5, "recall": 1.0, "f1": 0.6667, "flagged": 9000}}
    return [run("infonce_injected", 0.25), run("infonce_clean", 0.33), judged]


def test_merge_joins_the_arms_of_one_seed_and_recomputes_the_recovery(false_negatives):
    sources = ["injected.json", "clean.json", "rlhn.json"]
    merged = false_negatives.merge_runs(side_by_side_runs(), sources)
    assert list(merged["results"]) == ["infonce_clean", "infonce_injected", "rlhn"]  # the benchmark's arm order
    # cost 0.33 - 0.25 = 0.08; rlhn recovers (0.32 - 0.25) / 0.08 = 0.875; zero-shot (0.3159 - 0.25) / 0.08
    assert merged["injection_cost"] == pytest.approx(0.08)
    assert merged["best_strategy"] == "rlhn" and merged["recovered_fraction"] == pytest.approx(0.875)
    assert merged["target"]["met"] is True
    assert merged["zero_shot_fraction"] == pytest.approx(0.82375, abs=1e-4)
    # the judge settings are those of the run that judged: the InfoNCE runs' describe no result
    assert merged["settings"]["strategy_judge"] == "embedding" and merged["settings"]["no_cross_encoder"] is True
    assert merged["settings"]["seed"] == 0 and merged["settings_per_source"] == {}
    assert [c["results_file"] for c in merged["commands"]] == sources
    assert merged["judges"]["embedding"]["flagged"] == 9000
    assert "separation" not in merged  # none of these runs measured it
    table = false_negatives.markdown(merged)
    assert "| rlhn (judge `embedding`) | 0.3200 |" in table
    assert "`python benchmarks/false_negatives.py --arms infonce_clean`" in table


def test_merge_lists_the_judge_settings_per_file_where_the_runs_that_judged_differ(false_negatives):
    runs = side_by_side_runs()
    other_judge = json.loads(json.dumps(runs[2]))
    other_judge["settings"]["strategy_judge"] = "embedding_worst"
    other_judge["results"] = {"hn_remove": {"ndcg@10": 0.27, "judge": "embedding_worst"}}
    merged = false_negatives.merge_runs([*runs, other_judge], ["i.json", "c.json", "r.json", "h.json"])
    assert "strategy_judge" not in merged["settings"] and merged["settings"]["no_cross_encoder"] is True
    assert merged["settings_per_source"] == {
        "r.json": {"strategy_judge": "embedding"},
        "h.json": {"strategy_judge": "embedding_worst"},
    }
    # the same seed's runs with the judge's flags on every file, or only on the one that judged, merge alike, so the
    # seeds combine
    flagged_everywhere = side_by_side_runs()
    for run in flagged_everywhere[:2]:
        run["settings"] |= {"no_cross_encoder": True, "strategy_judge": "embedding"}
    for run in flagged_everywhere:
        run["settings"]["seed"] = 1
    seed0 = false_negatives.merge_runs(side_by_side_runs(), ["i.json", "c.json", "r.json"])
    seed1 = false_negatives.merge_runs(flagged_everywhere, ["i.json", "c.json", "r.json"])
    combined = false_negatives.combine_seeds([seed0, seed1], ["seed0.json", "seed1.json"])
    assert combined["seeds"] == [0, 1] and combined["recovered_fraction"] == pytest.approx(0.875)


def test_merge_refuses_runs_that_trained_on_other_rows_or_disagree(false_negatives):
    sources = ["a.json", "b.json", "c.json"]
    runs = side_by_side_runs()
    runs[1]["settings"]["lr"] = 2e-5
    with pytest.raises(ValueError, match=r"b\.json was made with other settings than a\.json: \['lr'\]"):
        false_negatives.merge_runs(runs, sources)
    runs = side_by_side_runs()
    runs[2]["data"]["injection"]["changes"] = 4000
    with pytest.raises(ValueError, match=r"c\.json holds other rows than a\.json"):
        false_negatives.merge_runs(runs, sources)
    runs = side_by_side_runs()
    runs[1]["results"]["infonce_injected"] = {"ndcg@10": 0.26}  # the same arm twice, another score
    with pytest.raises(ValueError, match="results 'infonce_injected' of b.json differs"):
        false_negatives.merge_runs(runs, sources)
    runs = side_by_side_runs()
    runs[1]["data"]["injected_rows"] = {"listed_negatives": 27472}  # recorded by one run only: no contradiction
    assert false_negatives.merge_runs(runs, sources)["data"]["injected_rows"] == {"listed_negatives": 27472}
    runs[2]["data"]["injected_rows"] = {"listed_negatives": 14016}
    with pytest.raises(ValueError, match=r"c\.json holds other rows"):
        false_negatives.merge_runs(runs, sources)
    runs = side_by_side_runs()
    runs[1]["results"]["infonce_injected"] = {"ndcg@10": 0.25, "train_seconds": 1.0}  # the same run: merged once
    assert false_negatives.merge_runs(runs, sources)["results"]["infonce_injected"]["ndcg@10"] == 0.25


def test_merge_command_writes_json_and_markdown(false_negatives, tmp_path):
    sources = []
    for i, report in enumerate(side_by_side_runs()):
        path = tmp_path / f"run{i}.json"
        path.write_text(json.dumps(report))
        sources.append(str(path))
    out = tmp_path / "merged.json"
    with pytest.raises(SystemExit):  # one step at a time
        false_negatives.parse_args(["--merge", *sources, "--combine", *sources, "--out", str(out)])
    with pytest.raises(SystemExit, match="cannot read"):
        false_negatives.main(["--merge", *sources, str(tmp_path / "missing.json"), "--out", str(out)])
    for text, message in (("[1]", "is not a results file"), ('{"settings": {}}', "has no results object")):
        (tmp_path / "odd.json").write_text(text)
        with pytest.raises(SystemExit, match=message):
            false_negatives.main(["--merge", *sources, str(tmp_path / "odd.json"), "--out", str(out)])
    assert false_negatives.main(["--merge", *sources, "--out", str(out)]) == 0
    merged = json.loads(out.read_text())
    assert merged["merged_from"] == sources and merged["merge_command"].startswith("python ")
    assert "rlhn` recovers 0.88 of it" in out.with_suffix(".md").read_text()


def slice_args(model, nfcorpus_dir, out, queries: int, corpus: int, eval_queries: int) -> list[str]:
    """Arguments of a smoke run on a slice of NFCorpus: 32 tokens, one epoch, two mined negatives per row."""
    args = ["--model", model, "--data_dir", str(nfcorpus_dir.parent), "--out", str(out)]
    args += ["--train_queries", str(queries), "--max_corpus", str(corpus), "--max_eval_queries", str(eval_queries)]
    return args + ["--negative_pool", "2", "--max_length", "32", "--eval_max_length", "32", "--batch_size", "8",
                   "--epochs", "1"]  # fmt: skip


def test_judge_free_arms_run_end_to_end_on_a_slice_of_nfcorpus(
    false_negatives, real_model_path, nfcorpus_dir, tmp_path
):
    out = tmp_path / "fn.json"
    args = slice_args(real_model_path, nfcorpus_dir, out, queries=16, corpus=50, eval_queries=8)
    args += ["--arms", "infonce_clean", "infonce_injected", "guide_masked", "oracle_hn_remove"]
    args += ["--injection_order", "teacher_score"]
    assert false_negatives.main(args) == 0
    report = json.loads(out.read_text())
    assert list(report["results"]) == ["infonce_clean", "infonce_injected", "guide_masked", "oracle_hn_remove"]
    assert all(0.0 <= run["ndcg@10"] <= 1.0 for run in report["results"].values())
    assert report["judges"] == {}  # no relabeling strategy asked for, so no judge ran
    assert report["separation"]["hidden_positives"] == report["data"]["injection"]["changes"]
    assert 0.0 <= report["separation"]["auc_score"] <= 1.0
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


def test_after_injection_mining_lists_a_hidden_positive_only_inside_the_mining_window(false_negatives):
    """Query "1 0" scores a document "s 0" as s. Positives p1 .9, p2 .8, p3 .1, p4 .5; negatives n1 .7, n2 .6, n3 .3.
    The teacher-score injection at rate 0.5 hides the two best-scored positives, p1 and p2, leaving p3 and p4 as
    labels. Mined again against those labels, two negatives from ranks [0, 5): the non-labels rank p1 .9, p2 .8,
    n1 .7, n2 .6, n3 .3, so the row lists p1 and p2 (hidden: label_source "noise") and no plain negative; with the
    window [2, 5) it lists n1 and n2, and neither hidden positive is in the row any more."""
    from argparse import Namespace

    from hf_robust_ir.data import rows_from_qrels
    from hf_robust_ir.data.schema import RetrievalCorpus
    from hf_robust_ir.noise import FalseNegativeInjection

    scores = {"p1": 0.9, "p2": 0.8, "p3": 0.1, "p4": 0.5, "n1": 0.7, "n2": 0.6, "n3": 0.3}
    train = RetrievalCorpus(
        corpus={doc: f"{score} 0" for doc, score in scores.items()},
        queries={"q": "1 0"},
        qrels={"q": {"p1": 1, "p2": 2, "p3": 1, "p4": 2}},
        name="toy",
    )
    candidates = {"q": [(doc, scores[doc]) for doc in ("p1", "p2", "p3", "p4", "n3")]}
    clean = rows_from_qrels(train, candidates, candidate_source="mined")
    injected = FalseNegativeInjection(0.5, order="teacher_score").apply(clean, train).rows
    assert [d for d, s in zip(injected[0]["doc_ids"], injected[0]["label_source"]) if s == "noise"] == ["p1", "p2"]

    def remine(range_min):
        args = Namespace(
            negative_pool=2, mining_range_min=range_min, mining_range_max=5, mining_relative_margin=None,
            encode_batch_size=8, bf16=False, verbose=False,
        )  # fmt: skip
        return false_negatives.remine_after_injection(args, VectorEncoder(), train, None, injected, None)

    rows = remine(0)
    assert false_negatives.listed_counts(rows) == {"listed_negatives": 2, "hidden_positives_listed": 2}
    row = rows[0]
    listed = dict(zip(row["doc_ids"], zip(row["labels"], row["label_source"])))
    assert listed == {"p3": (1.0, "qrels"), "p4": (2.0, "qrels"), "p1": (0.0, "noise"), "p2": (0.0, "noise")}
    assert row["teacher_scores"] == pytest.approx([scores[d] for d in row["doc_ids"]])
    rows = remine(2)
    assert false_negatives.listed_counts(rows) == {"listed_negatives": 2, "hidden_positives_listed": 0}
    row = rows[0]
    listed = dict(zip(row["doc_ids"], zip(row["labels"], row["label_source"])))
    assert listed == {"p3": (1.0, "qrels"), "p4": (2.0, "qrels"), "n1": (0.0, "mined"), "n2": (0.0, "mined")}


def test_flag_quality_scores_the_relabeled_candidates_against_the_moved_positives(false_negatives):
    """Flags (q1, b) and (q2, d); hidden positives (q1, b), (q1, c), (q2, e): 1 hit, P = 1/2, R = 1/3, F1 = 0.4."""
    relabeled = {
        "query_id": ["q1", "q2"],
        "doc_ids": [["a", "b", "c"], ["d", "e"]],
        "label_source": [["qrels", "relabeled:embedding", "mined"], ["relabeled:cross_encoder", "noise"]],
    }
    moved = {("q1", "b"), ("q1", "c"), ("q2", "e")}
    quality = false_negatives.flag_quality(relabeled, moved, judged=4)
    assert quality == {
        "judged_negatives": 4,
        "moved_positives": 3,
        "flagged": 2,
        "true_flags": 1,
        "precision": 0.5,
        "recall": 0.3333,
        "f1": 0.4,
    }


def test_heldout_queries_leave_out_the_benchmark_queries_and_unjudged_documents(false_negatives):
    from hf_robust_ir.data.schema import RetrievalCorpus

    queries = {q: f"text {q}" for q in ("q1", "q2", "q3", "q4", "q5")}
    qrels = {"q1": {"a": 1}, "q2": {"b": 2, "z": 1}, "q3": {"z": 1}, "q4": {"a": 0}, "q5": {"c": 1}}
    full = RetrievalCorpus({"a": "A", "b": "B", "c": "C", "z": "Z"}, queries, qrels, "toy")
    used = RetrievalCorpus({"a": "A", "b": "B", "c": "C"}, {"q1": "text q1"}, {"q1": {"a": 1}}, "toy")
    heldout = false_negatives.heldout_queries(full, used)
    # q1 is the benchmark's; q3's only positive is outside the corpus; q4 has no positive
    assert heldout.qrels == {"q2": {"b": 2}, "q5": {"c": 1}}
    assert heldout.queries == {"q2": "text q2", "q5": "text q5"}
    assert heldout.corpus is used.corpus
    one = false_negatives.heldout_queries(full, used, limit=1, seed=0)
    assert len(one.qrels) == 1 and set(one.qrels) <= {"q2", "q5"}
    assert one.qrels == false_negatives.heldout_queries(full, used, limit=1, seed=0).qrels  # the seed decides


def test_the_heldout_reranker_judges_and_drives_the_strategies_when_asked(
    false_negatives, real_model_path, nfcorpus_dir, tmp_path
):
    out = tmp_path / "fn.json"
    args = slice_args(real_model_path, nfcorpus_dir, out, queries=12, corpus=40, eval_queries=6)
    args += ["--cross_encoder_batch_size", "4", "--embedding_references", "best", "--arms", "rlhn"]
    args += ["--cross_encoder_heldout", "--cross_encoder_heldout_queries", "12"]
    args += ["--mining_stage", "after_injection", "--mining_range_min", "0"]  # hidden positives listed where mined
    with pytest.raises(SystemExit):  # a judge this run does not make
        false_negatives.parse_args([*args, "--strategy_judge", "embedding_worst"])
    assert false_negatives.main([*args, "--strategy_judge", "cross_encoder_heldout"]) == 0
    report = json.loads(out.read_text())
    assert set(report["judges"]) == {"embedding", "cross_encoder", "cross_encoder_heldout"}
    heldout = report["judges"]["cross_encoder_heldout"]
    assert heldout["judged_negatives"] == report["judges"]["embedding"]["judged_negatives"]
    assert heldout["config"]["model"].endswith("reranker_heldout")
    assert report["data"]["heldout_judge_queries"] == 12
    assert report["strategy_judge"] == "cross_encoder_heldout"
    assert report["results"]["rlhn"]["judge"] == "cross_encoder_heldout"
    assert report["settings"]["cross_encoder_heldout"] is True
    listed = report["data"]["injected_rows"]
    assert listed["mining_stage"] == "after_injection" and report["settings"]["mining_stage"] == "after_injection"
    assert listed["listed_negatives"] == 2 * 12  # the pool, mined again against the labels left
    assert 0 < listed["hidden_positives_listed"] <= report["data"]["injection"]["changes"]
    assert heldout["moved_positives"] == listed["hidden_positives_listed"]  # judged: the listed ones only


def test_without_the_cross_encoder_the_embedding_judge_drives_the_strategies(
    false_negatives, real_model_path, nfcorpus_dir, tmp_path
):
    out = tmp_path / "fn.json"
    args = slice_args(real_model_path, nfcorpus_dir, out, queries=12, corpus=40, eval_queries=6)
    args += ["--embedding_references", "best", "--no_cross_encoder", "--arms", "hn_remove"]
    with pytest.raises(SystemExit):  # the judge this run skips cannot drive the strategies
        false_negatives.parse_args([*args, "--strategy_judge", "cross_encoder"])
    assert false_negatives.main(args) == 0
    report = json.loads(out.read_text())
    assert set(report["judges"]) == {"embedding"}
    assert report["strategy_judge"] == "embedding" and report["results"]["hn_remove"]["judge"] == "embedding"
    assert report["settings"]["no_cross_encoder"] is True
    work = tmp_path / "fn_work"
    assert not list(work.glob("reranker*")) and not (work / "relabeled_cross_encoder").exists()
    # hn_remove drops exactly the negatives the judge flagged and keeps every query
    injected = false_negatives.load_rows(work / "rows_injected")
    removed = false_negatives.load_rows(work / "relabeled_embedding" / "hn_remove")
    assert len(removed) == len(injected) == report["results"]["hn_remove"]["train_queries"] == 12
    dropped = sum(len(r["doc_ids"]) for r in injected) - sum(len(r["doc_ids"]) for r in removed)
    assert dropped == report["judges"]["embedding"]["flagged"] > 0
    # started again on the same file, the run judges and trains nothing anew (the seconds would differ)
    assert false_negatives.main(args) == 0
    again = json.loads(out.read_text())
    assert again["judges"] == report["judges"] and again["results"] == report["results"]


def test_score_threshold_judges_are_measured_and_can_drive_the_strategies(
    false_negatives, real_model_path, nfcorpus_dir, tmp_path
):
    out = tmp_path / "fn.json"
    args = slice_args(real_model_path, nfcorpus_dir, out, queries=12, corpus=40, eval_queries=6)
    args += ["--embedding_references", "best", "--no_cross_encoder", "--arms", "hn_remove"]
    args += ["--embedding_score_thresholds", "-1.01", "0.3", "1.01", "--strategy_judge", "embedding_score_0.3"]
    with pytest.raises(SystemExit):  # a threshold this run does not measure
        false_negatives.parse_args([*args[:-1], "embedding_score_0.4"])
    assert false_negatives.main(args) == 0
    report = json.loads(out.read_text())
    judges = report["judges"]
    assert list(judges) == ["embedding", "embedding_score_-1.01", "embedding_score_0.3", "embedding_score_1.01"]
    judged = judges["embedding"]["judged_negatives"]
    # cosine lies in [-1, 1]: under -1.01 every listed negative is flagged, over 1.01 none
    assert judges["embedding_score_-1.01"]["flagged"] == judged > 0
    assert judges["embedding_score_1.01"]["flagged"] == 0
    assert 0 < judges["embedding_score_0.3"]["flagged"] < judged
    assert judges["embedding_score_0.3"]["config"]["score_threshold"] == 0.3
    assert report["settings"]["embedding_score_thresholds"] == [-1.01, 0.3, 1.01]
    assert report["strategy_judge"] == "embedding_score_0.3"
    work = tmp_path / "fn_work"
    injected = false_negatives.load_rows(work / "rows_injected")
    removed = false_negatives.load_rows(work / "relabeled_embedding_score_0.3" / "hn_remove")
    dropped = sum(len(r["doc_ids"]) for r in injected) - sum(len(r["doc_ids"]) for r in removed)
    assert dropped == judges["embedding_score_0.3"]["flagged"]
    assert report["results"]["hn_remove"]["judge"] == "embedding_score_0.3"


def test_arms_alone_prepares_the_rows_and_reports_their_separation_only(
    false_negatives, real_model_path, nfcorpus_dir, tmp_path
):
    out = tmp_path / "fn.json"
    args = slice_args(real_model_path, nfcorpus_dir, out, queries=12, corpus=40, eval_queries=6) + ["--arms"]
    assert false_negatives.main(args) == 0
    report = json.loads(out.read_text())
    assert report["results"] == {} and report["judges"] == {}
    assert (tmp_path / "fn_work" / "rows_injected").exists()
    separation = report["separation"]
    assert separation["hidden_positives"] == report["data"]["injected_rows"]["hidden_positives_listed"] > 0
    assert list(separation["score_threshold"]) == ["0.3", "0.4", "0.5", "0.6", "0.7"]
    flags = [rule["flagged"] for rule in separation["score_threshold"].values()]
    assert flags == sorted(flags, reverse=True)  # a higher threshold never flags more
    assert "Flagging by the recorded score" in out.with_suffix(".md").read_text()
