"""`hf-robust-ir eval`: zero-shot retrieval metrics of a model on one split of a BEIR folder."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from .common import (
    cross_encoder_error,
    input_error,
    load_bi_encoder,
    no_relevant_error,
    output_file_error,
    setup_logging,
)

HELP = "Evaluate a retriever on a BEIR folder: nDCG@10, Recall@100, MRR@10, MAP as one JSON object on stdout."

logger = logging.getLogger("hf_robust_ir.eval")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", required=True, help="model folder (BiEncoder, sentence-transformers or transformers)"
    )
    parser.add_argument("--data", required=True, help="BEIR folder: corpus.jsonl, queries.jsonl, qrels/<split>.tsv")
    parser.add_argument("--split", default="test", help="qrels split to evaluate (default: test)")
    parser.add_argument("--batch_size", type=int, default=64, help="encoding batch size (default: 64)")
    parser.add_argument("--bf16", action="store_true", help="encode under bfloat16 autocast")
    parser.add_argument(
        "--max_length", type=int, default=None, help="token limit for queries and documents (default: the model's own)"
    )
    parser.add_argument("--top_k", type=int, default=1000, help="documents retrieved per query (default: 1000)")
    parser.add_argument("--chunk_size", type=int, default=50_000, help="documents encoded per chunk (default: 50000)")
    parser.add_argument(
        "--index_factory",
        default="Flat",
        help="faiss index-factory string, e.g. IVF4096,Flat or HNSW32 (default: Flat)",
    )
    parser.add_argument("--search_params", default=None, help="faiss search parameters, e.g. nprobe=64 or efSearch=256")
    parser.add_argument(
        "--keep_identical_ids",
        action="store_true",
        help="keep retrieved documents whose id equals the query id (dropped by default, as in MTEB and BEIR)",
    )
    parser.add_argument("--output", default=None, help="also write the JSON object to this file")
    parser.add_argument("--run_output", default=None, help="write the run as a TREC run file (qid Q0 docid rank score)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def write_trec_run(run: dict[str, dict[str, float]], path: str | Path, tag: str = "hf_robust_ir") -> None:
    """Write ``{query_id: {doc_id: score}}`` as a TREC run file, best first per query.

    Documents are in trec_eval's order (ties by document id descending) and scores are written in full, so trec_eval
    reading the file ranks them as the evaluation did.
    """
    from hf_robust_ir.evaluation import trec_eval_ranking

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for qid, docs in run.items():
            for rank, (doc_id, score) in enumerate(trec_eval_ranking(docs), 1):
                f.write(f"{qid} Q0 {doc_id} {rank} {float(score)!r} {tag}\n")


def run(args: argparse.Namespace) -> int:
    setup_logging()
    data_dir = Path(args.data)
    error = (
        input_error(data_dir, args.model)
        or cross_encoder_error(args.model)
        or output_file_error(args.output, "--output")
        or output_file_error(args.run_output, "--run_output")
    )
    if error:
        print(error, file=sys.stderr)
        return 2
    if args.max_length is not None and args.max_length < 1:  # 0 would truncate nothing
        print(f"error: max_length must be >= 1, got {args.max_length}", file=sys.stderr)
        return 2

    from hf_robust_ir.data.beir import load_beir
    from hf_robust_ir.evaluation import NonFiniteEmbeddingError, RetrievalEvaluator

    start = time.perf_counter()
    data = load_beir(data_dir, split=args.split)
    logger.info("Loaded %r", data)
    error = no_relevant_error(data, args.split, "evaluate")  # metrics of 0.0 would read as a model finding nothing
    if error:
        print(error, file=sys.stderr)
        return 2
    try:
        evaluator = RetrievalEvaluator(
            data,
            top_k=args.top_k,
            batch_size=args.batch_size,
            bf16=args.bf16,
            chunk_size=args.chunk_size,
            index_factory=args.index_factory,
            search_params=args.search_params,
            ignore_identical_ids=not args.keep_identical_ids,
            show_progress_bar=not args.quiet,
            name=f"{data.name}/{args.split}",
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    model = load_bi_encoder(args.model, args.max_length)
    try:
        metrics = evaluator(model)
    except NonFiniteEmbeddingError as exc:  # a broken model, not a bug here: one line, no traceback
        print(f"error: --model {args.model!r}: {exc}", file=sys.stderr)
        return 2
    logger.info("Evaluated %d queries in %.1f s", len(evaluator.last_run), time.perf_counter() - start)
    if args.run_output:
        write_trec_run(evaluator.last_run, args.run_output)
    text = json.dumps(metrics)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(text + "\n")
    print(text)
    return 0
