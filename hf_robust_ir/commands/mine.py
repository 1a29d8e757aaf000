"""`hf-robust-ir mine`: training rows from qrels plus hard negatives mined with a model's faiss top-k."""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
from pathlib import Path

from .common import (
    MINING_FILTER_HELP,
    cross_encoder_error,
    input_error,
    load_bi_encoder,
    no_relevant_error,
    output_folder_error,
    setup_logging,
)

HELP = "Mine hard negatives with a retriever: canonical training rows (qrels positives + filtered top-k negatives)."

DATA_INFO_NAME = "hf_robust_ir_data.json"

logger = logging.getLogger("hf_robust_ir.mine")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", required=True, help="model folder (BiEncoder, sentence-transformers or transformers)"
    )
    parser.add_argument("--data", required=True, help="BEIR folder: corpus.jsonl, queries.jsonl, qrels/<split>.tsv")
    parser.add_argument("--split", default="train", help="qrels split to mine for (default: train)")
    parser.add_argument("--output", required=True, help="output folder (datasets save_to_disk + rows.jsonl)")
    parser.add_argument("--num_negatives", type=int, default=15, help="negatives per query (default: 15)")
    for name, kind, default in (
        ("range_min", int, 0),
        ("range_max", int, 100),
        ("absolute_margin", float, None),
        ("relative_margin", float, None),
        ("max_score", float, None),
        ("min_score", float, None),
    ):
        shown = "" if default is None else f" (default: {default})"
        parser.add_argument(f"--{name}", type=kind, default=default, help=MINING_FILTER_HELP[name] + shown)
    parser.add_argument("--batch_size", type=int, default=64, help="encoding batch size (default: 64)")
    parser.add_argument("--chunk_size", type=int, default=50_000, help="documents encoded per chunk (default: 50000)")
    parser.add_argument("--max_length", type=int, default=None, help="token limit (default: the model's own)")
    parser.add_argument(
        "--index_factory",
        default="Flat",
        help="faiss index-factory string, e.g. IVF4096,Flat or HNSW32 (default: Flat)",
    )
    parser.add_argument("--search_params", default=None, help="faiss search parameters, e.g. nprobe=64 or efSearch=256")
    parser.add_argument("--bf16", action="store_true", help="encode under bfloat16 autocast")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    setup_logging()
    data_dir = Path(args.data)
    error = (
        input_error(data_dir, args.model)
        or cross_encoder_error(args.model)
        or output_folder_error(args.output, "--output")
    )
    if error:
        print(error, file=sys.stderr)
        return 2

    from hf_robust_ir.data.beir import load_beir
    from hf_robust_ir.mining import MiningStats, check_mining_arguments, mine_hard_negatives

    try:
        check_mining_arguments(
            args.num_negatives,
            args.range_min,
            args.range_max,
            args.batch_size,
            args.chunk_size,
            args.min_score,
            args.max_score,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    data = load_beir(data_dir, split=args.split)
    logger.info("Loaded %r", data)
    error = no_relevant_error(data, args.split, "mine")  # no rows: a saved empty dataset does not load back
    if error:
        print(error, file=sys.stderr)
        return 2
    model = load_bi_encoder(args.model, args.max_length)
    error = index_settings_error(model.embedding_dim, args.index_factory, args.search_params, len(data.corpus))
    if error:  # before the corpus is encoded, not after
        print(error, file=sys.stderr)
        return 2
    stats = MiningStats()
    rows = mine_hard_negatives(
        model,
        data,
        num_negatives=args.num_negatives,
        range_min=args.range_min,
        range_max=args.range_max,
        absolute_margin=args.absolute_margin,
        relative_margin=args.relative_margin,
        max_score=args.max_score,
        min_score=args.min_score,
        batch_size=args.batch_size,
        chunk_size=args.chunk_size,
        index_factory=args.index_factory,
        search_params=args.search_params,
        bf16=args.bf16,
        show_progress_bar=not args.quiet,
        stats=stats,
    )

    out = Path(args.output)
    rows.save_to_disk(str(out))
    rows.to_json(str(out / "rows.jsonl"), lines=True)
    # the rows hold document ids only: record where their texts are
    (out / DATA_INFO_NAME).write_text(
        json.dumps({"corpus": str(data_dir.resolve()), "split": args.split, "model": str(args.model)}, indent=2) + "\n"
    )
    negatives = [sum(1 for label in labels if label == 0) for labels in rows["labels"]]
    summary = {
        "output": str(out),
        "rows": len(rows),
        "negatives_per_row": {
            "mean": sum(negatives) / len(negatives) if negatives else 0.0,
            "min": min(negatives, default=0),
            "max": max(negatives, default=0),
        },
        **stats.as_dict(),
        "seconds": round(time.perf_counter() - start, 1),
    }
    print(json.dumps(summary))
    return 0


def index_settings_error(dim: int, index_factory: str, search_params: str | None, documents: int) -> str | None:
    """A message when faiss cannot build ``index_factory`` over ``dim``-dimensional embeddings, set
    ``search_params`` on it, or train its inverted lists on the ``documents`` of the corpus; None when it can."""
    import faiss

    from hf_robust_ir.evaluation import DocumentIndex, build_index, set_search_params

    try:
        index = build_index(dim, index_factory)
    except RuntimeError as exc:
        return f"error: --index_factory {index_factory!r}: {_faiss_reason(exc)}"
    try:
        set_search_params(index, search_params)
    except RuntimeError as exc:
        return f"error: --search_params {search_params!r}: {_faiss_reason(exc)} (index {index_factory!r})"
    try:
        lists = faiss.extract_index_ivf(index).nlist
    except RuntimeError:  # not an IVF index
        return None
    training_points = min(documents, DocumentIndex().max_train_points)
    if lists > training_points:
        return (
            f"error: --index_factory {index_factory!r}: {lists} lists need at least {lists} training documents, "
            f"the corpus gives {training_points}; use fewer lists or Flat"
        )
    return None


def _faiss_reason(exc: RuntimeError) -> str:
    """The reason in a faiss error, without the C++ signature and source line before it."""
    reason = re.split(r" at \S+:\d+: ", str(exc).strip())[-1]
    return re.sub(r"^Error: '.*?' failed: ", "", reason)
