"""`hf-robust-ir score`: fill ``teacher_scores`` of training rows with a bi-encoder or cross-encoder teacher."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from .common import below_least, input_error, output_folder_error, setup_logging

HELP = "Score every candidate of training rows with a teacher (bi-encoder or cross-encoder): teacher_scores."

PROGRESS_NAME = "teacher_scores.partial.jsonl"

LEAST_VALUES = {"batch_size": 1, "chunk_size": 1, "max_length": 1}
"""Flags that count something and their least value (``max_length`` None: the teacher's own)."""

logger = logging.getLogger("hf_robust_ir.score")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="BEIR folder whose corpus.jsonl holds the candidates' texts")
    parser.add_argument(
        "--rows",
        default=None,
        help="training rows (output folder of `mine`/`noise`/`relabel`, jsonl, parquet, save_to_disk, or a HF-format "
        "file); default: rows from the split's qrels",
    )
    parser.add_argument("--split", default="train", help="qrels split when --rows is not given (default: train)")
    parser.add_argument("--teacher", required=True, help="teacher model folder (BiEncoder / CrossEncoder)")
    parser.add_argument(
        "--teacher_kind",
        default="auto",
        choices=("auto", "bi_encoder", "cross_encoder"),
        help="what the teacher is (default: recognized from the folder)",
    )
    parser.add_argument("--output", required=True, help="output folder (save_to_disk + rows.jsonl)")
    parser.add_argument("--batch_size", type=int, default=64, help="encoding / scoring batch size (default: 64)")
    parser.add_argument(
        "--chunk_size", type=int, default=256, help="rows scored between two progress saves (default: 256)"
    )
    parser.add_argument("--max_length", type=int, default=None, help="token limit (default: the teacher's own)")
    parser.add_argument("--bf16", action="store_true", help="score under bfloat16 autocast")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    setup_logging()
    found = below_least(vars(args), LEAST_VALUES)
    if found:
        print(f"error: --{found[0]} {found[1]}", file=sys.stderr)
        return 2
    data_dir = Path(args.data)
    error = input_error(data_dir, args.teacher)
    if error:
        print(error.replace("--model", "--teacher"), file=sys.stderr)
        return 2
    error = output_folder_error(args.output, "--output")
    if error:
        print(error, file=sys.stderr)
        return 2

    from hf_robust_ir.commands.mine import DATA_INFO_NAME
    from hf_robust_ir.data import load_beir, load_training_data, rows_from_qrels
    from hf_robust_ir.data.beir import load_corpus
    from hf_robust_ir.relabel.runner import write_jsonl
    from hf_robust_ir.scoring import load_teacher, score_rows

    start = time.perf_counter()
    if args.rows:
        if not Path(args.rows).exists():
            print(f"error: --rows {args.rows!r} does not exist", file=sys.stderr)
            return 2
        corpus = load_corpus(data_dir, args.split)  # the rows' texts only: the folder needs no qrels/<split>.tsv
        rows = load_training_data(args.rows, corpus=corpus).rows
    else:
        data = load_beir(data_dir, split=args.split)
        corpus, rows = data.corpus, rows_from_qrels(data)
    if len(rows) == 0:  # a saved empty dataset does not load back
        source = args.rows or f"qrels/{args.split}.tsv (no query with a relevant document)"
        print(f"error: no rows to score in {source}", file=sys.stderr)
        return 2
    logger.info("%d rows to score (%s)", len(rows), args.rows or f"qrels/{args.split}.tsv")
    teacher = load_teacher(args.teacher, args.teacher_kind, args.max_length)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    progress = out / PROGRESS_NAME
    try:
        scored = score_rows(
            rows,
            corpus,
            teacher,
            batch_size=args.batch_size,
            chunk_size=args.chunk_size,
            progress_file=progress,
            bf16=args.bf16,
            show_progress=not args.quiet,
        )
    except (KeyError, ValueError) as exc:
        print(f"error: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2
    scored.save_to_disk(str(out))
    write_jsonl(scored, out / "rows.jsonl")
    info = {
        "corpus": str(data_dir.resolve()),
        "split": args.split,
        "rows": args.rows,
        "teacher": str(args.teacher),
        "teacher_kind": type(teacher).__name__,
    }
    (out / DATA_INFO_NAME).write_text(json.dumps(info, indent=2) + "\n")
    progress.unlink(missing_ok=True)  # the finished rows are saved; the progress file is no longer needed
    candidates = sum(len(ids) for ids in scored["doc_ids"])
    summary = {
        "output": str(out),
        "rows": len(scored),
        "candidates_scored": candidates,
        "teacher": type(teacher).__name__,
        "seconds": round(time.perf_counter() - start, 1),
    }
    print(json.dumps(summary))
    return 0
