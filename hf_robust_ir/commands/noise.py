"""`hf-robust-ir noise`: noisy training rows with known ground truth (semantic swap, uniform swap, false negatives)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from .common import (
    below_least,
    cross_encoder_error,
    input_error,
    load_bi_encoder,
    output_folder_error,
    setup_logging,
)

HELP = "Inject label noise into training rows: noisy rows plus changes.jsonl, the record of every change."

KINDS = ("semantic_swap", "uniform_swap", "false_negative")

logger = logging.getLogger("hf_robust_ir.noise")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="BEIR folder: corpus.jsonl, queries.jsonl, qrels/<split>.tsv")
    parser.add_argument("--split", default="train", help="qrels split of the training queries (default: train)")
    parser.add_argument("--kind", required=True, choices=KINDS, help="the kind of noise")
    parser.add_argument(
        "--rate",
        type=float,
        required=True,
        help="swaps: fraction of the queries whose positives are replaced; "
        "false_negative: fraction of the positives (of queries with >= --min_positives) moved to the negatives",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument(
        "--rows",
        default=None,
        help="clean canonical training rows over the --data corpus to corrupt (e.g. the output folder of "
        "`hf-robust-ir mine`; jsonl/parquet/save_to_disk); default: rows from the split's qrels",
    )
    parser.add_argument("--output", required=True, help="output folder (save_to_disk + rows.jsonl + changes.jsonl)")
    semantic = parser.add_argument_group("semantic_swap")
    semantic.add_argument("--model", default=None, help="model folder whose top-k non-relevant passages are swapped in")
    semantic.add_argument("--top_k", type=int, default=20, help="non-relevant candidates to draw from (default: 20)")
    semantic.add_argument(
        "--skip_top", type=int, default=0, help="skip the most similar non-relevant candidates (default: 0)"
    )
    semantic.add_argument("--batch_size", type=int, default=64, help="encoding batch size (default: 64)")
    semantic.add_argument("--max_length", type=int, default=None, help="token limit (default: the model's own)")
    semantic.add_argument("--bf16", action="store_true", help="encode under bfloat16 autocast")
    parser.add_argument(
        "--min_positives",
        type=int,
        default=2,
        help="false_negative: only queries with at least this many positives (default: 2)",
    )
    parser.add_argument(
        "--order",
        choices=("random", "teacher_score"),
        default="random",
        help="false_negative: which positives move — random ones, or each query's best-scored first (as false "
        "negatives in mined data are; needs --rows with teacher scores, e.g. from `hf-robust-ir mine`)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    setup_logging()
    found = below_least(vars(args), {"max_length": 1, "batch_size": 1, "top_k": 1})  # max_length 0: no limit
    if found:
        print(f"error: --{found[0]} {found[1]}", file=sys.stderr)
        return 2
    data_dir = Path(args.data)
    if args.kind == "semantic_swap" and args.model is None:
        print("error: --kind semantic_swap needs --model (the model whose top-k is swapped in)", file=sys.stderr)
        return 2
    model_path = args.model if args.kind == "semantic_swap" else None  # other kinds load no model
    error = input_error(data_dir, model_path) or output_folder_error(args.output, "--output")
    if error is None and model_path is not None:
        error = cross_encoder_error(model_path)
    if error:
        print(error, file=sys.stderr)
        return 2

    from hf_robust_ir.commands.mine import DATA_INFO_NAME
    from hf_robust_ir.data import load_beir, load_training_data, rows_from_qrels
    from hf_robust_ir.data.schema import DataFormatError
    from hf_robust_ir.noise import FalseNegativeInjection, SemanticSwapNoise, UniformSwapNoise

    start = time.perf_counter()
    try:
        data = load_beir(data_dir, split=args.split)
        logger.info("Loaded %r", data)
        if args.rows:
            training = load_training_data(args.rows, corpus=data.corpus)
            outside = [doc_id for doc_id in training.corpus if doc_id not in data.corpus]
            if outside:  # rows of texts (sentence-transformers, Tevatron, ...) get ids of their own
                raise ValueError(
                    f"{args.rows}: documents not in the corpus of {data_dir}, e.g. {outside[0]!r}; noise needs "
                    "canonical rows over that corpus (query_id, query, doc_ids, labels), e.g. from `hf-robust-ir mine`"
                )
            rows = training.rows
        else:
            rows = rows_from_qrels(data)
        logger.info("Clean rows: %d queries (%s)", len(rows), args.rows or f"qrels/{args.split}.tsv")
        if len(rows) == 0:  # a saved empty dataset does not load back
            source = args.rows or f"qrels/{args.split}.tsv (no query with a relevant document)"
            raise ValueError(f"no training rows to corrupt in {source}")
        if args.kind == "semantic_swap":
            model = load_bi_encoder(args.model, args.max_length)
            noise = SemanticSwapNoise(
                model,
                args.rate,
                top_k=args.top_k,
                skip_top=args.skip_top,
                seed=args.seed,
                batch_size=args.batch_size,
                bf16=args.bf16,
                show_progress_bar=not args.quiet,
            )
        elif args.kind == "uniform_swap":
            noise = UniformSwapNoise(data.corpus, args.rate, seed=args.seed)
        else:
            noise = FalseNegativeInjection(
                args.rate, min_positives=args.min_positives, seed=args.seed, order=args.order
            )
        result = noise.apply(rows, data)
    except (DataFormatError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    out = Path(args.output)
    result.save(out)
    info = {"corpus": str(data_dir.resolve()), "split": args.split, "clean_rows": args.rows, "noise": noise.config()}
    if args.kind == "semantic_swap":
        info["model"] = str(args.model)
    (out / DATA_INFO_NAME).write_text(json.dumps(info, indent=2) + "\n")
    summary = {"output": str(out), **result.summary(), "seconds": round(time.perf_counter() - start, 1)}
    logger.info("%d changes in %d of %d queries", summary["changes"], summary["changed_queries"], summary["queries"])
    print(json.dumps(summary))
    return 0
