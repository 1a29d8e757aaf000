"""benchmarks/self_training.py: its options and a toy-scale run on a slice of SciFact with a tiny model."""

import json

import pytest
from conftest import benchmark_module

HARD_AND_SOFT = '{"losses": [{"name": "infonce", "weight": 1.0}, {"name": "kl_distillation", "weight": 1.0}]}'


def test_options():
    with benchmark_module("self_training") as bench:
        args = bench.parse_args(["--out", "x.json", "--model", "m", "--synthetic_passages", "all"])
        assert args.synthetic_passages == 0 and args.pretrain_loss == "kl_distillation"
        assert args.pretrain_loss_kwargs == {"teacher_temperature": 0.05} and args.runs == list(bench.RUN_KINDS)
        args = bench.parse_args(
            ["--out", "x.json", "--model", "m", "--pretrain_loss", "weighted_sum", "--pretrain_loss_kwargs",
             HARD_AND_SOFT, "--runs", "self_training"]
        )  # fmt: skip
        assert args.pretrain_loss_kwargs["losses"][0]["name"] == "infonce" and args.runs == ["self_training"]
        assert args.synthetic_passages == 2000 and args.finetune_epochs == 3.0  # the quick profile's
        assert args.pretrain_bf16 is bench.native_bf16()  # resolved from the machine, never left "auto"
        assert bench.parse_args(["--out", "x.json", "--model", "m", "--no-pretrain_bf16"]).pretrain_bf16 is False
        args = bench.parse_args(["--out", "x.json", "--model", "m", "--pretrain_bf16", "--finetune_epochs", "1"])
        assert args.pretrain_bf16 is True and args.finetune_epochs == 1.0
        for bad in (["--synthetic_passages", "0"], ["--runs", "gist"]):
            with pytest.raises(SystemExit):
                bench.parse_args(["--out", "x.json", "--model", "m", *bad])


def test_native_bf16_reads_the_cpu_flags(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cpuinfo = tmp_path / "cpuinfo"
    with benchmark_module("self_training") as bench:
        cpuinfo.write_text("flags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_tile\n")
        assert bench.native_bf16(cpuinfo) is True
        cpuinfo.write_text("flags\t\t: fpu sse avx2 amx_bf16 amx_tile\n")
        assert bench.native_bf16(cpuinfo) is True
        cpuinfo.write_text("flags\t\t: fpu sse avx2 avx512f avx512bw\n")  # AVX-512 without its bf16 extension
        assert bench.native_bf16(cpuinfo) is False
        assert bench.native_bf16(tmp_path / "missing") is False


def test_a_loop_variant_without_the_baselines(tiny_model_path, scifact_dir, tmp_path):
    out = tmp_path / "variant.json"
    common = ["--profile", "quick", "--seed", "0", "--model", tiny_model_path, "--data_dir", str(scifact_dir.parent),
              "--max_train_queries", "12", "--max_eval_queries", "5", "--max_corpus", "40", "--max_length", "32",
              "--synthetic_passages", "all", "--pretrain_group_size", "2", "--pretrain_loss", "weighted_sum",
              "--pretrain_loss_kwargs", HARD_AND_SOFT, "--out", str(out)]  # fmt: skip
    with benchmark_module("self_training") as bench:
        with pytest.raises(SystemExit, match="round-0 teacher"):
            bench.main([*common, "--runs", "distillation"])
        assert bench.main([*common, "--runs", "self_training"]) == 0
        report = json.loads(out.read_text())
        assert set(report["results"]) == {
            "self_training_30pct", "self_training_30pct_round0", "self_training_30pct_round1", "infonce_30pct"
        }  # fmt: skip
        assert report["target"]["passed"] is None  # no MNRL run in this file
        assert report["budget"]["pretrain_loss"] == "weighted_sum" and report["budget"]["synthetic_passages"] == 0
        round1 = report["runs"]["self_training_30pct_round1"]["0"]["round"]
        assert round1["synthetic_queries"] == 40  # every passage of the slice
        # the same file resumes with the distillation baseline, taught by the loop's round-0 model
        assert bench.main([*common, "--runs", "distillation"]) == 0
        assert "distillation_30pct" in json.loads(out.read_text())["results"]
        with pytest.raises(SystemExit, match="another budget"):
            bench.main([*common[:-1], str(out), "--pretrain_epochs", "2", "--runs", "self_training"])


def test_the_noise_setting_trains_on_every_query_with_swapped_positives(tiny_model_path, scifact_dir, tmp_path):
    out = tmp_path / "noise.json"
    args = ["--profile", "quick", "--seed", "0", "--model", tiny_model_path, "--data_dir", str(scifact_dir.parent),
            "--max_train_queries", "10", "--max_eval_queries", "5", "--max_corpus", "40", "--max_length", "32",
            "--synthetic_passages", "8", "--pretrain_group_size", "2", "--settings", "noise40",
            "--runs", "self_training", "st_mnrl", "--out", str(out)]  # fmt: skip
    with benchmark_module("self_training") as bench:
        assert bench.main(args) == 0
    report = json.loads(out.read_text())
    assert {"self_training_noise40", "infonce_noise40", "st_mnrl_noise40"} <= set(report["results"])
    noise = report["runs"]["self_training_noise40"]["0"]["noise"]
    assert noise["rate"] == 0.4 and noise["queries"] == 10
    assert noise["selected_queries"] == 4 and noise["changed_queries"] == 4
    # every query, not 30 % of them: MNRL's rows are the 10 noisy queries once per fine-tuning epoch (3)
    assert report["runs"]["st_mnrl_noise40"]["0"]["train"]["rows"] == 30


def test_the_target_compares_the_seeds_both_runs_hold(tmp_path):
    """An interrupted file holds the loop for seeds 0 and 1 but the reference for seed 0 only: the check pairs seed 0
    (0.60 vs 0.65: not passed), not the mean of two seeds against one (0.70 vs 0.65)."""
    with benchmark_module("self_training") as bench:
        store = bench.Store(tmp_path / "r.json", {"profile": "quick"}, "cmd")
        store.put("self_training_30pct", 0, {"ndcg@10": 0.60})
        store.put("self_training_30pct", 1, {"ndcg@10": 0.80})
        store.put("st_mnrl_100pct", 0, {"ndcg@10": 0.65})
    target = json.loads((tmp_path / "r.json").read_text())["target"]
    assert target["values"] == [0.6, 0.65] and target["passed"] is False
    assert target["difference"] == -0.05 and target["seeds"] == ["0"]
