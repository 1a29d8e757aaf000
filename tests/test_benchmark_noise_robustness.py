"""benchmarks/noise_robustness.py: the oracle reference rows, the plot, and a toy-scale run on a slice of SciFact."""

import datasets
import pytest
from conftest import benchmark_module, canonical_row

from hf_robust_ir.data.schema import ROW_FEATURES


def test_oracle_rows_keep_restore_and_drop():
    clean = {"q1": {"a": 1}, "q2": {"b": 1}, "q3": {"c": 2}}
    rows = datasets.Dataset.from_list(
        [
            canonical_row("q1", ["a", "x"], [1.0, 0.0]),  # clean: kept as it is
            canonical_row("q2", ["w", "b"], [1.0, 0.0]),  # wrong positive, true one listed as the hard negative
            canonical_row("q3", ["v", "y"], [1.0, 0.0]),  # wrong positive, true one absent
        ],
        features=ROW_FEATURES,
    )
    with benchmark_module("noise_robustness") as bench:
        fixed, counts = bench.oracle_rows(rows, clean)
    assert counts == {"kept": 1, "restored": 1, "dropped": 1}
    assert fixed["query_id"] == ["q1", "q2"]
    assert fixed[0] == rows[0]
    assert fixed[1]["doc_ids"] == ["w", "b"] and fixed[1]["labels"] == [0.0, 1.0]
    assert fixed[1]["label_source"] == ["oracle", "oracle"]
    assert fixed.features == rows.features


def test_corpus_oracle_rows_restore_every_row_from_the_clean_qrels():
    clean = {"q1": {"a": 1}, "q2": {"b": 1}, "q3": {"c": 2, "z": 0}, "q4": {"d": 1, "e": 1}}
    rows = datasets.Dataset.from_list(
        [
            canonical_row("q1", ["a", "x"], [1.0, 0.0], [0.9, 0.5]),  # clean: kept as it is
            canonical_row("q2", ["w", "b"], [1.0, 0.0], [0.8, 0.7]),  # true positive listed as the hard negative
            canonical_row("q3", ["v", "y"], [1.0, 0.0], [0.6, 0.4]),  # true positive absent: put in front
            canonical_row("q4", ["d", "e"], [1.0, 0.0], [0.9, 0.8]),  # a hidden positive (false-negative injection)
        ],
        features=ROW_FEATURES,
    )
    with benchmark_module("noise_robustness") as bench:
        fixed, counts = bench.corpus_oracle_rows(rows, clean)
    assert counts == {"kept": 1, "restored": 2, "restored_from_corpus": 1}
    assert fixed["query_id"] == ["q1", "q2", "q3", "q4"] and fixed[0] == rows[0]
    assert fixed[1]["doc_ids"] == ["w", "b"] and fixed[1]["labels"] == [0.0, 1.0]
    assert fixed[1]["label_source"] == ["oracle", "oracle"]
    assert fixed[1]["teacher_scores"] == pytest.approx([0.8, 0.7])
    assert fixed[2]["doc_ids"] == ["c", "v", "y"] and fixed[2]["labels"] == [2.0, 0.0, 0.0]
    assert fixed[2]["label_source"] == ["oracle", "oracle", "qrels"]
    teacher = fixed[2]["teacher_scores"]
    assert teacher[0] != teacher[0] and teacher[1:] == pytest.approx([0.6, 0.4])  # NaN: no score for the added passage
    assert fixed[3]["labels"] == [1.0, 1.0] and fixed[3]["label_source"] == ["qrels", "oracle"]
    assert fixed.features == rows.features


def test_oracle_and_relabeling_are_methods_of_the_command_and_report_their_counts(
    tiny_model_path, scifact_dir, tmp_path
):
    out = tmp_path / "oracle.json"
    argv = ["--profile", "quick", "--model", tiny_model_path, "--data_dir", str(scifact_dir.parent),
            "--methods", "oracle_infonce", "oracle_corpus_infonce", "relabel_replace", "--rates", "0.4",
            "--max_train_queries", "20",
            "--max_eval_queries", "5", "--max_corpus", "60", "--max_length", "32", "--eval_max_length", "32",
            "--out", str(out)]  # fmt: skip
    with benchmark_module("noise_robustness") as bench:
        with pytest.raises(SystemExit):
            bench.parse_args([*argv[:-1], str(out), "--methods", "oracle"])
        assert bench.main(argv) == 0
        import json

        report = json.loads(out.read_text())
    record = report["results"]["oracle_infonce"]["scifact"]["semantic_swap"]["0.4"]["seeds"]["0"]
    counts = record["oracle_rows"]
    assert counts["kept"] == 12 and counts["restored"] + counts["dropped"] == 8  # 40 % of 20 queries swapped
    assert 0.0 <= record["ndcg@10"] <= 1.0
    corpus = report["results"]["oracle_corpus_infonce"]["scifact"]["semantic_swap"]["0.4"]["seeds"]["0"]["oracle_rows"]
    assert corpus["kept"] == 12 and corpus["restored"] + corpus["restored_from_corpus"] == 8  # no query dropped
    assert report["methods"]["oracle_infonce"]["loss"]["name"] == "infonce"
    noise = report["noise"]["scifact"]["semantic_swap"]["0.4"]["0"]
    assert len(noise["rows_digest"]) == 16  # the rows every method of this file trained on
    relabeled = report["results"]["relabel_replace"]["scifact"]["semantic_swap"]["0.4"]["seeds"]["0"]
    assert set(relabeled["relabeling"]) == {"flagged", "flagged_relevant", "precision", "rows_flagged", "rows"}
    assert relabeled["relabeling"]["rows"] == 20  # replacing drops no row
    assert report["methods"]["relabel_replace"]["relabeling"]["strategy"] == "replace"


def test_a_plot_only_when_some_method_has_a_curve(tmp_path):
    budget = {"epochs": 1, "batch_size": 32, "learning_rate": 2e-5, "hard_negatives": 1}
    one_rate = {"infonce": {"scifact": {"semantic": {"0.4": {"mean": 0.6, "std": 0.0}}}}}
    two_rates = {
        "infonce": {"scifact": {"semantic": {"0.0": {"mean": 0.65, "std": 0.0}, "0.4": {"mean": 0.6, "std": 0.01}}}}
    }
    with benchmark_module("noise_robustness") as bench:
        assert not bench.has_curve(one_rate) and bench.has_curve(two_rates)
        path = tmp_path / "report.png"
        assert bench.plot({"summary": one_rate, "budget": budget}, path) is False and not path.exists()
        assert bench.plot({"summary": two_rates, "budget": budget}, path) is True and path.stat().st_size > 0


def test_two_processes_fill_one_results_file(tmp_path):
    """Two stores on one --out (as two processes with their own --methods) each keep the other's runs on save."""
    import json

    out = tmp_path / "shared.json"
    common = ["--model", str(tmp_path), "--rates", "0", "0.4", "--out", str(out)]
    record = {"ndcg@10": 0.5, "train": {"steps": 1}}
    with benchmark_module("noise_robustness") as bench:
        first = bench.ResultStore(out, bench.parse_args([*common, "--methods", "infonce"]), "first")
        first.save()
        second = bench.ResultStore(out, bench.parse_args([*common, "--methods", "st_mnrl"]), "second")
        first.put("infonce", "scifact", "semantic_swap", 0.0, 0, {**record, "ndcg@10": 0.68})
        second.put("st_multiplenegatives", "scifact", "semantic_swap", 0.0, 0, {**record, "ndcg@10": 0.67})
        first.put("infonce", "scifact", "semantic_swap", 0.4, 0, {**record, "ndcg@10": 0.61})
        report = json.loads(out.read_text())
        with pytest.raises(SystemExit, match="another budget"):
            bench.ResultStore(out, bench.parse_args([*common, "--epochs", "3"]), "third")
    summary = report["summary"]
    assert summary["infonce"]["scifact"]["semantic_swap"] == {
        "0": {"mean": 0.68, "std": 0.0, "n": 1},
        "0.4": {"mean": 0.61, "std": 0.0, "n": 1},
    }
    assert summary["st_multiplenegatives"]["scifact"]["semantic_swap"]["0"]["mean"] == 0.67
    assert set(report["methods"]) == {"infonce", "st_multiplenegatives"}
    assert [c["command"] for c in report["commands"]] == ["first", "second"]
    # each process's entry keeps its own latest wall time, whoever writes last
    second.started -= 100.0  # second runs on: its next write records a wall time first has not seen
    second._write()
    assert second.command["wall_time_seconds"] >= 100.0
    first.save()
    written = {c["command"]: c for c in json.loads(out.read_text())["commands"]}
    assert written["second"]["wall_time_seconds"] == second.command["wall_time_seconds"]
    assert written["first"]["wall_time_seconds"] == first.command["wall_time_seconds"]
    assert report["noise_cost"]["infonce"]["scifact"]["semantic_swap"]["0.4"] == pytest.approx(0.07)


def test_bf16_training_arguments_build_for_both_trainers(tmp_path):
    """--bf16 on a machine without an accelerator: transformers refuses bf16 there unless the arguments say
    use_cpu, which the benchmark must say for sentence-transformers' trainer too."""
    import torch
    from sentence_transformers.sentence_transformer.training_args import SentenceTransformerTrainingArguments

    from hf_robust_ir.trainer import RetrievalTrainingArguments

    with benchmark_module("noise_robustness") as bench:
        kwargs = bench._common_training_arguments(
            bench.parse_args(["--model", str(tmp_path), "--bf16"]), 0, str(tmp_path)
        )
    for arguments in (SentenceTransformerTrainingArguments(**kwargs), RetrievalTrainingArguments(**kwargs)):
        assert arguments.bf16 and arguments.use_cpu == (not torch.cuda.is_available())


def _relabel_setting(bench, tiny_model_path, margin):
    import argparse

    from hf_robust_ir.data import RetrievalCorpus
    from hf_robust_ir.modeling import BiEncoder

    corpus = {d: f"passage {d} about topic {i}" for i, d in enumerate("abwxyz")}
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}}
    train = RetrievalCorpus(corpus, {"q1": "question one", "q2": "question two"}, qrels, "toy")
    base = BiEncoder.from_pretrained(tiny_model_path, query_max_length=16, document_max_length=16)
    prepared = bench.Prepared("toy", train, None, None, None, base=base)
    args = argparse.Namespace(
        model=tiny_model_path,
        eval_max_length=16,
        encode_batch_size=4,
        relabel_margin=margin,
        relabel_judge="base",
        verbose=False,
    )
    rows = datasets.Dataset.from_list(
        [
            canonical_row("q1", ["a", "x", "y"], [1.0, 0.0, 0.0]),  # clean: its negatives are not relevant
            {**canonical_row("q2", ["w", "b", "z"], [1.0, 0.0, 0.0]), "label_source": ["qrels", "mined", "mined"]},
        ],
        features=ROW_FEATURES,
    )
    return args, rows, prepared


@pytest.mark.parametrize(
    "strategy, expected",
    [  # margin -10: the judge flags every listed negative (its score beats the best label minus 10)
        ("rlhn", [(["a", "x", "y"], [1.0, 1.0, 1.0]), (["w", "b", "z"], [1.0, 1.0, 1.0])]),
        ("hn_remove", [(["a"], [1.0]), (["w"], [1.0])]),
        ("remove", []),
        ("replace", [(["x", "y"], [1.0, 1.0]), (["b", "z"], [1.0, 1.0])]),
    ],
)
def test_relabeled_rows_apply_the_strategy_and_count_flag_precision(tiny_model_path, tmp_path, strategy, expected):
    with benchmark_module("noise_robustness") as bench:
        args, rows, prepared = _relabel_setting(bench, tiny_model_path, margin=-10.0)
        new_rows, record = bench.relabeled_rows(args, strategy, rows, prepared, str(tmp_path))
        assert [(r["doc_ids"], r["labels"]) for r in new_rows] == expected
        # four flags (two per row), one of them relevant by the clean qrels: q2's true positive b
        rows_left = len(expected)
        assert record == {"flagged": 4, "flagged_relevant": 1, "precision": 0.25, "rows_flagged": 2, "rows": rows_left}
        args.relabel_margin = 10.0  # nothing scores 10 above its label: the rows stay as they are
        same, record = bench.relabeled_rows(args, strategy, rows, prepared, str(tmp_path / "none"))
        unchanged = [{k: v for k, v in r.items() if k != "excluded_doc_ids"} for r in same.to_list()]
        assert unchanged == rows.to_list() and record["flagged"] == 0 and record["precision"] is None
        if strategy == "hn_remove":  # the dropped negatives are excluded from the rows' negatives for good
            assert [r["excluded_doc_ids"] for r in new_rows] == [["x", "y"], ["b", "z"]]
            assert same["excluded_doc_ids"] == [[], []]


def test_replace_keeps_the_relabeled_candidates_and_the_negatives_and_leaves_other_rows_alone():
    with benchmark_module("noise_robustness") as bench:
        row = {
            **canonical_row("q", ["w", "b", "x"], [1.0, 1.0, 0.0], teacher=[0.1, 0.2, 0.3]),
            "label_source": ["qrels", "relabeled:embedding", "mined"],
        }
        replaced = bench._replace_labels(row)
        assert replaced["doc_ids"] == ["b", "x"] and replaced["labels"] == [1.0, 0.0]
        assert replaced["label_source"] == ["relabeled:embedding", "mined"]
        assert replaced["teacher_scores"] == [0.2, 0.3]
        untouched = canonical_row("q", ["w", "x"], [1.0, 0.0])
        assert bench._replace_labels(untouched) == untouched


def test_relabeling_methods_of_one_run_share_the_judgments(tiny_model_path, tmp_path, monkeypatch):
    import hf_robust_ir.relabel.runner as runner

    summaries = []
    relabel = runner.relabel

    def recording(*args, **kwargs):
        result = relabel(*args, **kwargs)
        summaries.append(result.summary)
        return result

    monkeypatch.setattr(runner, "relabel", recording)
    with benchmark_module("noise_robustness") as bench:
        args, rows, prepared = _relabel_setting(bench, tiny_model_path, margin=-10.0)
        records = [bench.relabeled_rows(args, s, rows, prepared, str(tmp_path))[1] for s in ("rlhn", "hn_remove")]
    assert records[0]["flagged"] == records[1]["flagged"] == 4
    # the first method judges the four listed negatives; the second finds all four in the cache
    assert [(s["judged_pairs"], s["cache_hits"]) for s in summaries] == [(4, 0), (0, 4)]


def test_teacher_score_false_negatives_are_mined_again_after_the_noise():
    """Query "1 0" scores a document "s 0" as s: positives p1 .9, p2 .8, p3 .1, p4 .5, negative n1 .7. At rate 0.5
    the teacher-score order hides p1 and p2 (the best-scored); mined again against p3 and p4, one negative from ranks
    [0, 3) of p1 .9, p2 .8, n1 .7 is p1, a relevant passage the clean qrels know: one relevant mined negative."""
    from argparse import Namespace

    from test_mining import VectorEncoder

    from hf_robust_ir.data import rows_from_qrels
    from hf_robust_ir.data.schema import RetrievalCorpus

    scores = {"p1": 0.9, "p2": 0.8, "p3": 0.1, "p4": 0.5, "n1": 0.7}
    train = RetrievalCorpus(
        corpus={doc: f"{score} 0" for doc, score in scores.items()},
        queries={"q": "1 0"},
        qrels={"q": {"p1": 1, "p2": 1, "p3": 1, "p4": 1}},
        name="toy",
    )
    clean = rows_from_qrels(train, {"q": [(d, scores[d]) for d in ("p1", "p2", "p3", "p4", "n1")]}, "mined")
    args = Namespace(
        hard_negatives=1, negative_pool=1, mining_range_min=0, mining_range_max=3, mining_relative_margin=None,
        mining_stage="after_noise", fn_min_positives=2, fn_order="teacher_score", encode_batch_size=8, bf16=False,
        verbose=False,
    )  # fmt: skip
    with benchmark_module("noise_robustness") as bench:
        prepared = bench.Prepared("toy", train, None, clean, None, None, VectorEncoder())
        rows, summary = bench.noisy_rows(args, prepared, "false_negative", 0.5, seed=0)
        assert summary["changes"] == 2 and summary["relevant_mined_negatives"] == 1
        assert dict(zip(rows[0]["doc_ids"], rows[0]["labels"])) == {"p3": 1.0, "p4": 1.0, "p1": 0.0}
        args.fn_order = "random"  # needs no scores: rows from the qrels alone, as before
        rows, summary = bench.noisy_rows(args, prepared, "false_negative", 0.5, seed=0)
        assert summary["changes"] == 2
        assert sorted(rows[0]["labels"]) == [0.0, 1.0, 1.0]  # two positives left, one negative mined against them
        with pytest.raises(SystemExit):
            bench.parse_args(["--model", "m", "--fn_order", "teacher_score", "--hard_negatives", "0"])


def test_profiles_run_the_chosen_weakening_rule_and_bf16_follows_the_machine(tmp_path):
    with benchmark_module("noise_robustness") as bench:
        args = bench.parse_args(["--model", str(tmp_path)])
        assert args.loss_kwargs == {
            "label_weakening": bench.WEAKENING_RULE,
            "label_weakening_hybrid": bench.HYBRID_WEAKENING_RULE,
            "label_weakening_distilled": bench.DISTILLED_WEAKENING,
            "hybrid_distillation": bench.HYBRID_DISTILLATION,
        }
        assert bench.method_config("label_weakening", args)["loss"]["replace_margin"] == 0.15
        hybrid = bench.method_config("label_weakening_hybrid", args)
        assert hybrid["loss"]["name"] == "label_weakening" and hybrid["loss"]["replace_margin"] == 0.2
        assert hybrid["guide"]["lexical_weight"] == 0.6
        # variant 13: the same rule plus the hybrid guide's soft labels; and the soft labels on InfoNCE alone
        distilled = bench.method_config("label_weakening_distilled", args)
        weakening, soft = distilled["loss"]["losses"]
        assert distilled["loss"]["name"] == "weighted_sum" and distilled["guide"]["lexical_weight"] == 0.6
        assert (weakening["name"], weakening["replace_margin"], weakening["weight"]) == ("label_weakening", 0.2, 1.0)
        assert soft == {"name": "guide_distillation", "weight": 1.0, "guide_temperature": 0.05}
        ablation = bench.method_config("hybrid_distillation", args)["loss"]["losses"]
        assert [term["name"] for term in ablation] == ["infonce", "guide_distillation"]
        assert bench.WEAKENING_METHODS == ("label_weakening", "label_weakening_hybrid", "label_weakening_distilled")
        full = bench.parse_args(["--model", str(tmp_path), "--profile", "full"])
        assert len(full.methods) == 17 and not set(bench.HYBRID_GUIDED) & set(full.methods)  # on request only
        mine = bench.parse_args(["--model", str(tmp_path), "--loss_kwargs", 'label_weakening={"margin": 0.5}'])
        assert mine.loss_kwargs["label_weakening"] == {"margin": 0.5}  # replaces the rule, not merged into it
        assert args.bf16 is bench.native_bf16()  # resolved from the machine, never left None
        assert bench.parse_args(["--model", str(tmp_path), "--no-bf16"]).bf16 is False
        assert bench.parse_args(["--model", str(tmp_path), "--bf16"]).bf16 is True
        with pytest.raises(SystemExit):
            bench.parse_args(["--model", str(tmp_path), "--shard", "2/2"])
        with pytest.raises(SystemExit):
            bench.parse_args(["--model", str(tmp_path), "--lexical_weight", "-0.1"])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ('label_weakening={"margn": 1}', "unexpected keyword argument 'margn'"),
        ('label_weakening_distilled={"losses": [{"nam": "x"}]}', "losses[0]: a loss entry needs a 'name'"),
        ('hybrid_distillation={"losses": [{"name": "nope"}]}', "unknown loss 'nope'"),
    ],
)
def test_loss_kwargs_that_do_not_build_stop_before_any_work(kwargs, message, tmp_path, capsys):
    method = kwargs.partition("=")[0]
    with benchmark_module("noise_robustness") as bench:
        with pytest.raises(SystemExit):
            bench.parse_args(["--model", str(tmp_path), "--methods", method, "--loss_kwargs", kwargs])
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"error: --loss_kwargs {method}: " in error and message in error


def test_workers_share_the_plan_without_overlap_and_independently_of_what_is_done(tmp_path):
    class Store:
        def __init__(self, done=()):
            self.done = set(done)

        def run(self, method, dataset, kind, rate, seed):
            return {"ndcg@10": 0.5} if (method, kind, rate, seed) in self.done else None

    common = ["--model", str(tmp_path), "--datasets", "nfcorpus", "--kinds", "semantic_swap", "false_negative",
              "--rates", "0", "0.4", "--seeds", "0", "1",
              "--methods", "infonce", "st_mnrl"]  # fmt: skip
    with benchmark_module("noise_robustness") as bench:
        everything = bench.pending_runs(bench.parse_args(common), Store(), "nfcorpus")
        shares = [
            bench.pending_runs(bench.parse_args([*common, "--shard", f"{i}/2"]), Store(), "nfcorpus") for i in (0, 1)
        ]
        assert len(everything) == 2 * 2 * 2 * 2  # seeds x methods x kinds x rates
        assert sorted(shares[0] + shares[1]) == sorted(everything) and not set(shares[0]) & set(shares[1])
        # a method's clean runs of both noise kinds are one unit: trained once, by one worker
        for share in shares:
            clean = {(seed, method) for seed, kind, rate, method in share if rate == 0.0}
            kinds = {
                (seed, method): {k for s, k, r, m in share if (s, m) == (seed, method) and r == 0.0}
                for seed, method in clean
            }
            assert all(found == {"semantic_swap", "false_negative"} for found in kinds.values())
        # units alternate: (seed 0, infonce, clean) to worker 0, then its two noisy runs to 1 and 0, ...
        assert shares[0][:3] == [(0, "semantic_swap", 0.0, "infonce"), (0, "false_negative", 0.0, "infonce"),
                                 (0, "false_negative", 0.4, "infonce")]  # fmt: skip
        assert shares[1][0] == (0, "semantic_swap", 0.4, "infonce")
        # what a resumed file holds leaves the deal unchanged
        resumed = bench.pending_runs(
            bench.parse_args([*common, "--shard", "1/2"]), Store({("infonce", "semantic_swap", 0.4, 0)}), "nfcorpus"
        )
        assert resumed == shares[1][1:]


def test_label_weakening_with_the_hybrid_guides_soft_labels_trains_and_logs(tiny_model_path, scifact_dir, tmp_path):
    """label_weakening_distilled end to end on a tiny model: the hybrid guide is built, both terms train, the
    weakening rule's statistics reach the log, and the record names the guide and the two terms."""
    import json

    out = tmp_path / "distilled.json"
    argv = ["--profile", "quick", "--model", tiny_model_path, "--data_dir", str(scifact_dir.parent),
            "--methods", "label_weakening_distilled", "--rates", "0.4", "--max_train_queries", "16",
            "--max_eval_queries", "4", "--max_corpus", "40", "--max_length", "32", "--eval_max_length", "32",
            "--no-bf16", "--out", str(out)]  # fmt: skip
    with benchmark_module("noise_robustness") as bench:
        assert bench.main(argv) == 0
    report = json.loads(out.read_text())
    run = report["results"]["label_weakening_distilled"]["scifact"]["semantic_swap"]["0.4"]["seeds"]["0"]
    assert 0.0 <= run["ndcg@10"] <= 1.0 and run["train"]["steps"] >= 1
    assert "plausible_set_size" in run["train"]["last_log"]
    config = report["methods"]["label_weakening_distilled"]
    assert [term["name"] for term in config["loss"]["losses"]] == ["label_weakening", "guide_distillation"]
    assert config["guide"]["lexical"] == "BM25 over the training corpus"


def test_workers_fill_one_results_file(tiny_model_path, scifact_dir, tmp_path):
    """--workers 2: two processes of the script, each one method here, one results file with both runs."""
    import json

    out = tmp_path / "workers.json"
    argv = ["--profile", "quick", "--model", tiny_model_path, "--data_dir", str(scifact_dir.parent),
            "--methods", "infonce", "label_relaxation", "--rates", "0.4", "--max_train_queries", "16",
            "--max_eval_queries", "4", "--max_corpus", "40", "--max_length", "32", "--eval_max_length", "32",
            "--no-bf16", "--workers", "2", "--out", str(out)]  # fmt: skip
    with benchmark_module("noise_robustness") as bench:
        assert bench.main(argv) == 0
    report = json.loads(out.read_text())
    for method in ("infonce", "label_relaxation"):
        assert 0.0 <= report["results"][method]["scifact"]["semantic_swap"]["0.4"]["seeds"]["0"]["ndcg@10"] <= 1.0
    commands = [c["command"] for c in report["commands"]]
    assert len(commands) == 3 and sum("--shard 0/2" in c for c in commands) == 1
    assert sum("--shard 1/2" in c for c in commands) == 1


def test_cross_fitted_judges_are_trained_once_and_never_judge_their_own_queries(
    tiny_model_path, scifact_dir, tmp_path, monkeypatch
):
    import json

    out = tmp_path / "cross_fitted.json"
    argv = ["--profile", "quick", "--model", tiny_model_path, "--data_dir", str(scifact_dir.parent),
            "--methods", "relabel_hn_remove", "relabel_rlhn", "--rates", "0.4", "--relabel_judge", "cross_fitted",
            "--max_train_queries", "16", "--max_eval_queries", "4", "--max_corpus", "40", "--max_length", "32",
            "--eval_max_length", "32", "--no-bf16", "--out", str(out)]  # fmt: skip
    trained = []
    with benchmark_module("noise_robustness") as bench:
        original = bench.train_ours

        def counting(args, loss_name, rows, corpus, seed, work):
            trained.append((loss_name, sorted(rows["query_id"])))
            return original(args, loss_name, rows, corpus, seed, work)

        monkeypatch.setattr(bench, "train_ours", counting)
        assert bench.main(argv) == 0
    judges = [queries for loss, queries in trained if loss == "label_weakening"]
    assert len(judges) == 2 and [loss for loss, _ in trained].count("infonce") == 2  # judges shared by both methods
    assert not set(judges[0]) & set(judges[1]) and len(judges[0]) + len(judges[1]) == 16
    report = json.loads(out.read_text())
    config = report["methods"]["relabel_rlhn"]["relabeling"]["judge"]
    assert config["folds"] == 2 and config["fine_tuning"]["name"] == "label_weakening"
    record = report["results"]["relabel_hn_remove"]["scifact"]["semantic_swap"]["0.4"]["seeds"]["0"]["relabeling"]
    assert record["rows"] == 16  # hn_remove keeps every row


def test_targets_are_checked_for_each_weakening_method(tmp_path):
    with benchmark_module("noise_robustness") as bench:

        def cell(mean):
            return {"mean": mean, "std": 0.0, "n": 1}

        def curve(clean, noisy):
            return {"scifact": {"semantic_swap": {"0": cell(clean), "0.4": cell(noisy)}}}

        summary = {
            "infonce": curve(0.678, 0.606),
            "st_multiplenegatives": curve(0.679, 0.605),
            "st_gist": curve(0.660, 0.660),
            "label_weakening": curve(0.674, 0.673),
            "label_weakening_hybrid": curve(0.677, 0.680),
            "label_weakening_distilled": curve(0.690, 0.684),
        }
        checks = {c["check"]: (c["value"], c["passed"]) for c in bench.target_checks(summary)}
        assert checks["weakening@0.4 >= multiplenegatives@0"] == (pytest.approx(-0.006), False)
        assert checks["weakening_hybrid@0.4 >= multiplenegatives@0"] == (pytest.approx(0.001), True)
        assert checks["weakening_hybrid@0.4 - multiplenegatives@0.4 >= +0.010"] == (pytest.approx(0.075), True)
        assert checks["weakening_hybrid@0.4 > gist@0.4"] == (pytest.approx(0.020), True)
        assert checks["|weakening_hybrid@0 - infonce@0| <= 0.005"] == (pytest.approx(0.001), True)
        assert checks["|weakening@0 - infonce@0| <= 0.005"] == (pytest.approx(0.004), True)
        assert checks["weakening_distilled@0.4 >= multiplenegatives@0"] == (pytest.approx(0.005), True)
        assert checks["|weakening_distilled@0 - infonce@0| <= 0.005"] == (pytest.approx(0.012), False)
        assert len(checks) == 12
        # each check says how many seeds each side's mean is over; a merged file may hold different counts
        summary["st_multiplenegatives"]["scifact"]["semantic_swap"]["0"]["n"] = 2
        seeds = {c["check"]: c["seeds"] for c in bench.target_checks(summary)}
        assert seeds["weakening@0.4 >= multiplenegatives@0"] == [1, 2]
        assert seeds["weakening@0.4 > gist@0.4"] == [1, 1]
        budget = {"epochs": 1, "batch_size": 32, "learning_rate": 2e-5, "warmup_ratio": 0.1, "hard_negatives": 1,
                  "max_length": 256, "bf16": False, "limits": {}}  # fmt: skip
        report = {"summary": summary, "targets": bench.target_checks(summary), "budget": budget}
        table = bench.markdown_report(report)
        assert (
            "| -0.0060 | FAIL | 1 / 2 (means over different seeds) |" in table and "| +0.0130 | pass | 1 / 1 |" in table
        )


def test_results_made_apart_merge_into_one_file(tmp_path):
    """--merge: runs of two files (say, one machine per seed) land in one report whose means span both; a file of
    another budget or with another configuration of a method is refused; nothing is trained."""
    import json

    record = {"ndcg@10": 0.5, "train": {"steps": 1}}
    common = ["--model", str(tmp_path), "--rates", "0", "0.4", "--methods", "infonce"]
    first_path, second_path, out = tmp_path / "seed0.json", tmp_path / "seed1.json", tmp_path / "merged.json"
    with benchmark_module("noise_robustness") as bench:
        first = bench.ResultStore(first_path, bench.parse_args([*common, "--out", str(first_path)]), "first")
        first.put("infonce", "scifact", "semantic_swap", 0.0, 0, {**record, "ndcg@10": 0.68})
        first.put("infonce", "scifact", "semantic_swap", 0.4, 0, {**record, "ndcg@10": 0.60})
        second = bench.ResultStore(second_path, bench.parse_args([*common, "--out", str(second_path)]), "second")
        second.put("infonce", "scifact", "semantic_swap", 0.0, 1, {**record, "ndcg@10": 0.66})
        second.put("infonce", "scifact", "semantic_swap", 0.4, 1, {**record, "ndcg@10": 0.64})
        second.report["results"]["infonce"]["scifact"]["semantic_swap"]["0.4"]["seeds"]["0"] = {"ndcg@10": 0.1}
        second.save()  # a conflicting seed-0 run: the first file's, merged first, wins

        assert bench.main(["--merge", str(first_path), str(second_path), "--out", str(out)]) == 0
        merged = json.loads(out.read_text())
        assert merged["summary"]["infonce"]["scifact"]["semantic_swap"]["0"] == {
            "mean": 0.67,
            "std": pytest.approx(0.01414, abs=1e-5),
            "n": 2,
        }
        assert merged["summary"]["infonce"]["scifact"]["semantic_swap"]["0.4"]["mean"] == pytest.approx(0.62)
        assert merged["noise_cost"]["infonce"]["scifact"]["semantic_swap"]["0.4"] == pytest.approx(0.05)
        assert merged["finished_runs"] == 4
        assert [c["command"] for c in merged["commands"]] == ["first", "second"]
        assert [(m["file"], m["runs_left_out"]) for m in merged["merged_from"]] == [
            ("seed0.json", 0),
            ("seed1.json", 1),
        ]
        assert "| infonce | 0.6700 ± 0.0141 (2) | 0.6200 ± 0.0283 (2) |" in out.with_suffix(".md").read_text()

        # merging again into the same file changes nothing
        assert bench.main(["--merge", str(second_path), "--out", str(out)]) == 0
        again = json.loads(out.read_text())
        assert again["summary"] == merged["summary"] and len(again["merged_from"]) == 2

        # --methods: only those methods' runs are taken from the files, so another configuration of a method left
        # out does not stop the merge
        mixed_path = tmp_path / "mixed.json"
        mixed_args = bench.parse_args(
            ["--model", str(tmp_path), "--rates", "0", "--methods", "infonce", "label_weakening",
             "--loss_kwargs", 'label_weakening={"margin": 0.5}', "--out", str(mixed_path)]
        )  # fmt: skip
        mixed = bench.ResultStore(mixed_path, mixed_args, "mixed")
        mixed.put("infonce", "scifact", "semantic_swap", 0.0, 2, {**record, "ndcg@10": 0.67})
        mixed.put("label_weakening", "scifact", "semantic_swap", 0.0, 2, {**record, "ndcg@10": 0.9})
        weakening_first = tmp_path / "weakening_first.json"
        weakening_args = bench.parse_args([*common[:-1], "label_weakening", "--out", str(weakening_first)])
        bench.ResultStore(weakening_first, weakening_args, "w").save()
        with pytest.raises(SystemExit, match="label_weakening was run with"):
            bench.merge_results(tmp_path / "refused.json", [weakening_first, mixed_path])
        filtered_out = tmp_path / "filtered.json"
        argv = ["--merge", str(first_path), str(mixed_path), "--methods", "infonce", "--out", str(filtered_out)]
        assert bench.main(argv) == 0
        filtered = json.loads(filtered_out.read_text())
        assert set(filtered["results"]) == set(filtered["methods"]) == {"infonce"}
        assert filtered["summary"]["infonce"]["scifact"]["semantic_swap"]["0"]["mean"] == pytest.approx(0.675)
        assert [(m["file"], m["finished_runs"], m.get("methods")) for m in filtered["merged_from"]] == [
            ("seed0.json", 2, ["infonce"]),
            ("mixed.json", 1, ["infonce"]),
        ]
        with pytest.raises(SystemExit):
            bench.parse_args(["--merge", str(first_path), "--methods", "nope", "--out", str(filtered_out)])

        other_budget = tmp_path / "epochs3.json"
        bench.ResultStore(
            other_budget, bench.parse_args([*common, "--epochs", "3", "--out", str(other_budget)]), "x"
        ).save()
        with pytest.raises(SystemExit, match="another budget"):
            bench.merge_results(tmp_path / "new.json", [first_path, other_budget])
        other_rule = tmp_path / "rule.json"
        rule = ["--model", str(tmp_path), "--methods", "label_weakening", "--out", str(other_rule)]
        bench.ResultStore(
            other_rule, bench.parse_args([*rule, "--loss_kwargs", 'label_weakening={"margin": 0.5}']), "y"
        ).save()
        weakening = tmp_path / "weakening.json"
        bench.ResultStore(weakening, bench.parse_args([*rule[:-1], str(weakening)]), "z").save()
        with pytest.raises(SystemExit, match="label_weakening was run with"):
            bench.merge_results(tmp_path / "new.json", [weakening, other_rule])
        (tmp_path / "notes.json").write_text('["not a report"]')
        with pytest.raises(SystemExit, match="notes.json: not a noise_robustness results file"):
            bench.merge_results(tmp_path / "new.json", [tmp_path / "notes.json"])
        with pytest.raises(SystemExit, match="missing.json: not a readable results file"):
            bench.merge_results(tmp_path / "new.json", [tmp_path / "missing.json"])
        assert not (tmp_path / "new.json").exists()


def test_a_loss_option_added_later_at_its_default_is_the_same_configuration():
    """Files written before a loss gained an option (off by default) still resume and merge; another value does not."""
    with benchmark_module("noise_robustness") as bench:
        old = {"trainer": "hf_robust_ir", "loss": {"name": "label_weakening", "alpha": 0.1, "margin": 0.0}}
        new = {"trainer": "hf_robust_ir", "loss": {**old["loss"], "taylor_order": None}}
        assert bench.same_config(old, new) and bench.same_config(new, old)
        assert not bench.same_config(old, {**new, "loss": {**new["loss"], "taylor_order": 2}})
        assert not bench.same_config(old, {**new, "loss": {**new["loss"], "margin": 0.5}})
        assert not bench.same_config(old, {**new, "guide": {"lexical_weight": 0.6}})


def test_runs_on_other_rows_or_with_other_settings_are_not_put_together(tmp_path):
    """The noise record of each (dataset, kind, rate, seed) keeps a digest of the rows; a merge of files whose rows
    differ there (mined on another device, say) is refused, as is a second process writing one --out with other
    settings of a method."""
    import json

    rows = datasets.Dataset.from_list(
        [canonical_row("q1", ["a", "x"], [1.0, 0.0]), canonical_row("q2", ["b", "y"], [1.0, 0.0])],
        features=ROW_FEATURES,
    )
    relabeled = rows.map(lambda row: {"labels": [0.0, 1.0] if row["query_id"] == "q2" else row["labels"]})
    common = ["--model", str(tmp_path), "--rates", "0.4", "--methods", "infonce"]
    record = {"ndcg@10": 0.6, "train": {"steps": 1}}
    with benchmark_module("noise_robustness") as bench:
        digest = bench.rows_digest(rows)
        assert digest == bench.rows_digest(rows.select([0, 1])) and len(digest) == 16
        assert bench.rows_digest(relabeled) != digest
        paths = {}
        for name, seed_rows in (("gpu", rows), ("cpu", relabeled), ("same", rows)):
            path = paths[name] = tmp_path / f"{name}.json"
            store = bench.ResultStore(path, bench.parse_args([*common, "--out", str(path)]), name)
            store.report["noise"] = {
                "scifact": {"semantic_swap": {"0.4": {"0": {"rows_digest": bench.rows_digest(seed_rows)}}}}
            }
            store.put("infonce", "scifact", "semantic_swap", 0.4, 0, record)
        with pytest.raises(SystemExit, match=r"rows of scifact semantic_swap rate 0.4 seed 0 differ"):
            bench.merge_results(tmp_path / "mixed.json", [paths["gpu"], paths["cpu"]])
        assert not (tmp_path / "mixed.json").exists()
        assert bench.main(["--merge", str(paths["gpu"]), str(paths["same"]), "--out", str(tmp_path / "ok.json")]) == 0
        held = json.loads((tmp_path / "ok.json").read_text())["noise"]["scifact"]["semantic_swap"]["0.4"]["0"]
        assert held == {"rows_digest": digest}

        # two processes started together on one --out, label weakening with two rules
        shared = tmp_path / "shared.json"
        first, second = (
            bench.ResultStore(
                shared,
                bench.parse_args(
                    [
                        "--model",
                        str(tmp_path),
                        "--methods",
                        "label_weakening",
                        "--out",
                        str(shared),
                        "--loss_kwargs",
                        f'label_weakening={{"margin": {margin}}}',
                    ]
                ),  # fmt: skip
                f"margin {margin}",
            )
            for margin in (0.5, 1.5)
        )
        first.put("label_weakening", "scifact", "semantic_swap", 0.4, 0, record)
        with pytest.raises(SystemExit, match="another process ran label_weakening with"):
            second.put("label_weakening", "scifact", "semantic_swap", 0.4, 1, record)


def test_a_merge_into_the_file_of_a_running_process_keeps_the_runs_it_saves_meanwhile(tmp_path, monkeypatch):
    """--merge into the --out a process is still writing: a save of that process while the merge is under way waits
    for it, so the file ends with the process's seed-0 and seed-2 runs, the merged seed-1 run and the merge's record."""
    import json
    import threading

    record = {"ndcg@10": 0.5, "train": {"steps": 1}}
    common = ["--model", str(tmp_path), "--rates", "0.4", "--methods", "infonce"]
    out, other = tmp_path / "live.json", tmp_path / "seed1.json"
    with benchmark_module("noise_robustness") as bench:
        running = bench.ResultStore(out, bench.parse_args([*common, "--out", str(out)]), "running")
        running.put("infonce", "scifact", "semantic_swap", 0.4, 0, {**record, "ndcg@10": 0.60})
        source = bench.ResultStore(other, bench.parse_args([*common, "--out", str(other)]), "source")
        source.put("infonce", "scifact", "semantic_swap", 0.4, 1, {**record, "ndcg@10": 0.64})

        saving = threading.Thread(
            target=running.put, args=("infonce", "scifact", "semantic_swap", 0.4, 2, {**record, "ndcg@10": 0.62})
        )
        take_in = bench._take_in

        def save_meanwhile(ours, theirs, own_command=None, where=""):
            if where == str(other) and saving.ident is None:  # the merge taking in the other file
                saving.start()  # the running process saves a run after the merge has read --out
                saving.join(timeout=1.0)
            take_in(ours, theirs, own_command=own_command, where=where)

        monkeypatch.setattr(bench, "_take_in", save_meanwhile)
        bench.merge_results(out, [other])
        saving.join(timeout=10.0)
        assert not saving.is_alive()
        report = json.loads(out.read_text())
    entry = report["results"]["infonce"]["scifact"]["semantic_swap"]["0.4"]
    assert sorted(entry["seeds"]) == ["0", "1", "2"] and entry["ndcg@10"] == pytest.approx(0.62)
    assert [m["file"] for m in report["merged_from"]] == ["live.json", "seed1.json"]


def test_checks_flag_means_over_different_seeds_even_when_their_counts_agree(tmp_path):
    """Label weakening at 0.4 ran on seed 1 only, MNRL on seed 0 only (one seed each side, different noisy rows):
    the checks pairing them are over different seeds; the clean pair, both on seed 0, is not."""
    import json

    out = tmp_path / "seeds.json"
    argv = ["--model", str(tmp_path), "--rates", "0", "0.4", "--methods", "infonce", "st_mnrl", "label_weakening",
            "--out", str(out)]  # fmt: skip
    record = {"train": {"steps": 1}}
    with benchmark_module("noise_robustness") as bench:
        store = bench.ResultStore(out, bench.parse_args(argv), "runs")
        for method, rate, seed, ndcg in [
            ("infonce", 0.0, 0, 0.68),
            ("st_multiplenegatives", 0.0, 0, 0.68),
            ("st_multiplenegatives", 0.4, 0, 0.60),
            ("label_weakening", 0.0, 0, 0.678),
            ("label_weakening", 0.4, 1, 0.70),
        ]:
            store.put(method, "scifact", "semantic_swap", rate, seed, {**record, "ndcg@10": ndcg})
    report = json.loads(out.read_text())
    checks = {c["check"]: c for c in report["targets"] + report["budget_checks"]}
    assert checks["weakening@0.4 >= multiplenegatives@0"]["value"] == pytest.approx(0.02)
    assert checks["weakening@0.4 >= multiplenegatives@0"]["same_seeds"] is False
    assert checks["weakening@0.4 - multiplenegatives@0.4 >= +0.010"]["same_seeds"] is False
    assert checks["|weakening@0 - infonce@0| <= 0.005"]["same_seeds"] is True
    assert checks["st_multiplenegatives@0 - st_multiplenegatives@0.4 >= 0.010"]["same_seeds"] is True
    table = out.with_suffix(".md").read_text()
    assert "| weakening@0.4 >= multiplenegatives@0 | +0.0200 | pass | 1 / 1 (means over different seeds) |" in table
    assert "| \\|weakening@0 - infonce@0\\| <= 0.005 | +0.0020 | pass | 1 / 1 |" in table
