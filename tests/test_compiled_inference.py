"""BiEncoder.encode(compile=...): the inductor-frozen tower gives the eager embeddings and never goes stale."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from hf_robust_ir.modeling import BiEncoder, compiled_inference
from hf_robust_ir.modeling.compiled_inference import AUTO_COMPILE_MIN_TEXTS, should_compile, weights_version

TEXTS = [
    "a much longer document about protein folding and the structure of membranes in cells " * 2,
    "mid length text on vaccines",
    "seven words in this one, more or less",
    "another fairly long passage, on the statistics of clinical trials",
    "x",
]


@pytest.fixture()
def model(tiny_model_path):
    torch.manual_seed(0)
    return BiEncoder.from_pretrained(tiny_model_path)


def test_should_compile_auto_rule():
    assert should_compile(True, 1, bf16=False) and not should_compile(False, 10**6, bf16=True)
    assert should_compile(None, AUTO_COMPILE_MIN_TEXTS, bf16=True)
    assert not should_compile(None, AUTO_COMPILE_MIN_TEXTS - 1, bf16=True)
    assert not should_compile(None, AUTO_COMPILE_MIN_TEXTS, bf16=False)
    assert not should_compile(None, 10**6, bf16=True, device_type="cuda") and should_compile(True, 1, False, "cuda")


def test_compiled_encode_matches_eager_and_follows_weight_updates(model):
    eager = model.encode(TEXTS, batch_size=2, compile=False)
    compiled = model.encode(TEXTS, batch_size=2, compile=True)
    tower = model._compiled_towers["query"]
    assert not tower.failed
    np.testing.assert_allclose(compiled, eager, atol=1e-5)
    # A second call reuses the compiled tower; queries share it (one tower).
    model.encode(TEXTS[:3], "query", batch_size=3, compile=True)
    assert model._compiled_towers["query"] is tower

    # An optimizer-style in-place update changes the weights: the frozen graph must not be reused.
    with torch.no_grad():
        model.query_encoder.encoder.layer[0].output.dense.weight.mul_(-1.5)
    assert not tower.is_current(model.query_encoder)
    updated_eager = model.encode(TEXTS, batch_size=2, compile=False)
    updated_compiled = model.encode(TEXTS, batch_size=2, compile=True)
    assert model._compiled_towers["query"] is not tower
    assert np.abs(updated_eager - eager).max() > 1e-2
    np.testing.assert_allclose(updated_compiled, updated_eager, atol=1e-5)


def test_weights_version_sees_in_place_updates_and_moves(model):
    before = weights_version(model.query_encoder)
    assert weights_version(model.query_encoder) == before
    with torch.no_grad():
        next(model.query_encoder.parameters()).add_(0.0)
    assert weights_version(model.query_encoder) != before
    after_update = weights_version(model.query_encoder)
    model.to(torch.float64)
    assert weights_version(model.query_encoder) != after_update


def test_compile_failure_falls_back_to_eager(model, monkeypatch, caplog):
    def broken_compile(module, **kwargs):
        def run(*args, **kwargs):
            raise RuntimeError("no C++ compiler")

        return run

    monkeypatch.setattr(compiled_inference.torch, "compile", broken_compile)
    eager = model.encode(TEXTS, batch_size=2, compile=False)
    with caplog.at_level(logging.WARNING, logger=compiled_inference.__name__):
        result = model.encode(TEXTS, batch_size=2, compile=True)
    np.testing.assert_allclose(result, eager, atol=1e-6)
    assert model._compiled_towers["query"].failed
    assert sum("no C++ compiler" in record.getMessage() for record in caplog.records) == 1
