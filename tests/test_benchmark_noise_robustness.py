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


def test_oracle_is_a_method_of_the_command_and_reports_its_counts(tiny_model_path, scifact_dir, tmp_path):
    out = tmp_path / "oracle.json"
    argv = ["--profile", "quick", "--model", tiny_model_path, "--data_dir", str(scifact_dir.parent),
            "--methods", "oracle_infonce", "--rates", "0.4", "--max_train_queries", "20", "--max_eval_queries", "5",
            "--max_corpus", "60", "--max_length", "32", "--eval_max_length", "32", "--out", str(out)]  # fmt: skip
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
    assert report["methods"]["oracle_infonce"]["loss"]["name"] == "infonce"


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
