"""benchmarks/throughput.py end to end at toy scale: every phase runs, every ratio and nDCG@10 is reported."""

from __future__ import annotations

import json

import pytest
from conftest import benchmark_module


@pytest.fixture()
def throughput():
    with benchmark_module("throughput") as module:
        yield module


def test_encode_and_train_phases_report_ratios_compile_cost_and_ndcg(throughput, real_model_path, small_beir, tmp_path):
    out = tmp_path / "throughput.json"
    args = ["--model", real_model_path, "--data", str(small_beir), "--out", str(out), "--threads", "1"]
    args += ["--precision", "bf16", "--compile", "on", "--batch-size", "4", "--max-length", "32"]
    args += ["--repeats", "1", "--warmup-steps", "0", "--timed-steps", "1", "--phases", "encode", "train"]
    assert throughput.main(args) == 0
    report = json.loads(out.read_text())
    sides = {"sentence_transformers", "hf_robust_ir", "sentence_transformers_same_precision"}
    for key in ("encode_ratio", "train_ratio", "encode_ratio_same_precision", "train_ratio_same_precision"):
        assert report[key] > 0, key
        assert set(report["targets"][key]) >= {"target", "measured", "met", "ndcg@10_delta", "equal_ndcg@10"}
    assert set(report["encode"]["ndcg@10"]) == sides and set(report["train"]["ndcg@10"]) == sides
    assert report["encode"]["compile"] == "on" and report["encode"]["compile_s"] >= 0
    assert set(report["encode"]["break_even_documents"]) == sides - {"hf_robust_ir"}
    assert report["precision"]["hf_robust_ir"] == "bf16 autocast"
