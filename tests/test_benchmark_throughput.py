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


def test_every_forward_chunk_size_gets_an_untimed_warm_up_step(throughput, monkeypatch):
    """A step costs 1 s, plus 10 s the first time a chunk size runs (new shapes, first allocations). Every size then
    runs at the same steady speed, so each must be warmed up before it is timed: none is faster than one pass."""
    from argparse import Namespace

    import torch

    import hf_robust_ir.modeling

    clock = [0.0]
    seen: set = set()

    class FakeEncoder:
        forward_chunk_size = None

        @classmethod
        def from_pretrained(cls, *args, **kwargs):
            return cls()

        def to(self, device):
            return self

        def train(self):
            return self

        def tokenize(self, texts, kind):
            ones = torch.ones(len(texts), 4)
            return {"input_ids": ones.long(), "attention_mask": ones}

        def __call__(self, document):
            clock[0] += 1.0 + (10.0 if self.forward_chunk_size not in seen else 0.0)
            seen.add(self.forward_chunk_size)
            weight = torch.ones(3, requires_grad=True)
            return {"document_embeddings": torch.ones(document["input_ids"].shape[0], 3) * weight}

        def zero_grad(self, set_to_none=True):
            pass

    monkeypatch.setattr(hf_robust_ir.modeling, "BiEncoder", FakeEncoder)
    monkeypatch.setattr(throughput.time, "perf_counter", lambda: clock[0])
    args = Namespace(seed=0, batch_size=4, max_length=16)
    result = throughput.measure_chunking("model", [f"doc {i}" for i in range(10)], args, torch.device("cpu"))
    assert result["speed_vs_one_pass"] == {"None": 1.0, "4": 1.0, "2": 1.0}


def test_the_stated_run_order_is_the_one_the_sides_ran_in_on_even_repeats(throughput, monkeypatch, tmp_path):
    """Two repeats: repeat 0 runs sentence-transformers then ours, repeat 1 the reverse. The report, written after
    repeat 1, must still state repeat 0's order as the one reversed on odd repeats."""
    import types

    import sentence_transformers

    import hf_robust_ir.data.beir
    import hf_robust_ir.modeling

    ran: list[str] = []

    class FakeModel:
        tokenizer = None

        @classmethod
        def from_pretrained(cls, *args, **kwargs):
            return cls()

        def __init__(self, *args, **kwargs):
            self.side = "sentence_transformers" if args else "hf_robust_ir"

        def to(self, device):
            return self

        def encode(self, texts, **kwargs):
            return ran.append(self.side)

        encode_documents = encode_queries = encode

    data = types.SimpleNamespace(corpus={"d1": "a", "d2": "b"}, queries={"q1": "x"}, qrels={"q1": {"d1": 1}})
    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", FakeModel)
    monkeypatch.setattr(hf_robust_ir.modeling, "BiEncoder", FakeModel)
    monkeypatch.setattr(hf_robust_ir.data.beir, "load_beir", lambda *args, **kwargs: data)
    monkeypatch.setattr(throughput, "encode_padding", lambda *args: {})

    def run(task, encode_docs, encode_queries):
        encode_docs(task.docs)
        return {"docs_per_s": 2.0, "seconds": 1.0}, 0.5

    monkeypatch.setattr(throughput.EncodeTask, "run", run)
    out = tmp_path / "throughput.json"
    args = ["--model", "m", "--data", "d", "--out", str(out), "--precision", "fp32", "--repeats", "2"]
    assert throughput.main([*args, "--phases", "encode"]) == 0
    # warm-up of each side, then repeat 0 and repeat 1
    assert ran == ["sentence_transformers", "hf_robust_ir"] * 2 + ["hf_robust_ir", "sentence_transformers"]
    order = json.loads(out.read_text())["encode"]["order"]
    assert order == "per repeat: sentence_transformers, hf_robust_ir (reversed on odd repeats)"
