"""How well can a frozen model's score gap tell a swapped (wrong) positive from a clean one? Input to the choice of
label weakening's ``guide_margin``.

    python benchmarks/weakening_rule_analysis.py --out benchmarks/results/weakening_rule_analysis.json

On SciFact train, with the noise benchmark's default budget (semantic swap at rate 0.4, seed 0; the hardest non-labeled
passage mined after the noise as the hard negative), the base model scores each query's best label and its hard
negative. The weakening rule with a guide adds the hard negative when ``gap = score(hard negative) − score(best
label) > guide_margin``. For each threshold this reports how often it fires on clean rows (every addition there is a
wrong one unless the qrels missed a relevant passage), on the noisy rows whose hard negative is a relevant passage by
the clean qrels (the additions the rule exists for), and on the other noisy rows.

``beyond_row`` asks the same of candidates a row does not list: where the judge ranks each swapped query's true
positive among the passages the noisy row does not label, and what a rule drawing the label's replacement from the
judge's top ``k`` would give back. ``--judge cross_fitted`` replaces the base model as judge by two models fine-tuned
on the noisy rows of one half of the queries each, each judging the other half (the base model is the one that chose
the wrong positives, so it scores them close to the true ones by construction); ``--judge hybrid`` by the base model
plus ``--lexical_weight`` × BM25 (:class:`~hf_robust_ir.modeling.HybridGuide`, label weakening's hybrid guide). The
hybrid judge reorders the candidates the base model retrieved; it does not retrieve others.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import noise_robustness as shared  # noqa: E402  (the rows are built exactly as the noise benchmark builds them)

THRESHOLDS = [-0.05, 0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3]
RANK_DEPTHS = [1, 2, 3, 5, 10, 20]
POOL_DEPTHS = [1, 3, 10]
POOL_THRESHOLDS = [0.0, 0.1, 0.2]


def candidate_table(rows, qrels: dict[str, dict[str, int]]) -> dict:
    """The replacement rule judged per listed negative: a negative whose frozen-model score exceeds the row's best
    label by more than ``t`` would replace the label. For each ``t``: how many (row, negative) pairs fire, the
    precision (the share of them that are relevant by the clean qrels: a right replacement) and the recall (the share
    of the listed relevant negatives that fire). With a pool of several negatives this is what a rule that sees the
    whole pool at once would do; the collator shows one sampled negative a step."""
    gaps, relevant = [], []
    for row in rows:
        labels, scores = np.array(row["labels"]), np.array(row["teacher_scores"])
        if not (labels > 0).any():
            continue
        best_label = scores[labels > 0].max()
        truth = qrels.get(row["query_id"], {})
        for doc, label, score in zip(row["doc_ids"], labels, scores):
            if label <= 0:
                gaps.append(float(score - best_label))
                relevant.append(truth.get(doc, 0) > 0)
    gaps_array, relevant_array = np.array(gaps), np.array(relevant)
    table = {}
    for t in THRESHOLDS:
        fires = gaps_array > t
        hits = int((fires & relevant_array).sum())
        table[str(t)] = {
            "fired": int(fires.sum()),
            "precision": round(hits / max(int(fires.sum()), 1), 4),
            "recall": round(hits / max(int(relevant_array.sum()), 1), 4),
        }
    return {"pairs": len(gaps), "relevant_pairs": int(relevant_array.sum()), "fires_above": table}


def beyond_row_table(
    noisy_rows, clean_rows, candidates: dict[str, list[tuple[str, float]]], qrels: dict[str, dict[str, int]]
) -> dict:
    """What candidates beyond a row's listed ones could give: the frozen model's ranking of every passage a noisy row
    does not label (``candidates``: the query's top documents with their scores, best first, as the semantic swap
    retrieved them).

    - ``true_positive_rank``: for each swapped query (noisy labels differ from the clean ones), the rank of its best
      ranked clean positive among the passages the noisy row does not label (1: the hardest mined negative), counted
      cumulatively up to each depth; ``beyond`` when it is not in the retrieved list at all.
    - ``pool_rule[k][t]``: a rule that takes the top ``k`` unlabeled passages and keeps those scoring more than ``t``
      above the row's best label — a plausible set drawn from the corpus. ``fired`` passages, their ``precision``
      (relevant by the clean qrels), the share of swapped queries given back a relevant passage
      (``swapped_recovered``) and the share of rows not swapped that get any passage (``unswapped_fired``: a wrong
      addition unless the qrels missed a relevant passage).
    """
    clean_positives = {
        row["query_id"]: {d for d, y in zip(row["doc_ids"], row["labels"]) if y > 0} for row in clean_rows
    }
    ranks: list[int | None] = []
    pool = {
        k: {t: {"fired": 0, "hits": 0, "recovered": 0, "unswapped_fired": 0} for t in POOL_THRESHOLDS}
        for k in POOL_DEPTHS
    }
    swapped_count = unswapped_count = 0
    for row in noisy_rows:
        query_id = row["query_id"]
        labels, scores = np.array(row["labels"]), np.array(row["teacher_scores"])
        if not (labels > 0).any() or query_id not in candidates:
            continue
        noisy_labels = {d for d, label in zip(row["doc_ids"], labels) if label > 0}
        best_label = float(scores[labels > 0].max())
        truth = qrels.get(query_id, {})
        swapped = noisy_labels != clean_positives.get(query_id, noisy_labels)
        swapped_count += swapped
        unswapped_count += not swapped
        ranking = [(doc, float(score)) for doc, score in candidates[query_id] if doc not in noisy_labels]
        if swapped:
            ranks.append(next((i + 1 for i, (doc, _) in enumerate(ranking) if truth.get(doc, 0) > 0), None))
        for k in POOL_DEPTHS:
            for t in POOL_THRESHOLDS:
                chosen = [doc for doc, score in ranking[:k] if score - best_label > t]
                hits = sum(truth.get(doc, 0) > 0 for doc in chosen)
                cell = pool[k][t]
                cell["fired"] += len(chosen)
                cell["hits"] += hits
                cell["recovered"] += bool(swapped and hits)
                cell["unswapped_fired"] += bool(not swapped and chosen)
    rank_table = {str(d): sum(r is not None and r <= d for r in ranks) for d in RANK_DEPTHS}
    rank_table["beyond"] = sum(r is None for r in ranks)
    pool_table = {
        str(k): {
            str(t): {
                "fired": cell["fired"],
                "precision": round(cell["hits"] / max(cell["fired"], 1), 4),
                "swapped_recovered": round(cell["recovered"] / max(swapped_count, 1), 4),
                "unswapped_fired": round(cell["unswapped_fired"] / max(unswapped_count, 1), 4),
            }
            for t, cell in cells.items()
        }
        for k, cells in pool.items()
    }
    return {
        "swapped_queries": swapped_count,
        "unswapped_queries": unswapped_count,
        "true_positive_rank": rank_table,
        "pool_rule": pool_table,
    }


def true_positive_preferred(noisy_rows, clean_rows) -> dict[str, int]:
    """For the swapped queries (noisy labels differ from the clean ones), how often the judge scores the clean best
    label above the noisy best label: a rule comparing the two could put the right one back. Both row sets carry the
    judge's scores (``teacher_scores``)."""

    def best_label(row):
        labels, scores = np.array(row["labels"]), np.array(row["teacher_scores"])
        return float(scores[labels > 0].max()), {d for d, y in zip(row["doc_ids"], row["labels"]) if y > 0}

    clean = {row["query_id"]: best_label(row) for row in clean_rows if any(y > 0 for y in row["labels"])}
    swapped = preferred = 0
    for row in noisy_rows:
        if not any(y > 0 for y in row["labels"]) or row["query_id"] not in clean:
            continue
        noisy_score, noisy_labels = best_label(row)
        clean_score, clean_labels = clean[row["query_id"]]
        if noisy_labels != clean_labels:
            swapped += 1
            preferred += clean_score > noisy_score
    return {"swapped_queries": swapped, "true_positive_scored_higher": preferred}


def rescore(
    model, rows, candidates: dict[str, list[tuple[str, float]]], queries: dict[str, str], corpus: dict[str, str], bf16
) -> tuple[list[dict], dict[str, list[tuple[str, float]]]]:
    """``rows`` with ``teacher_scores`` replaced by ``model``'s ``q·d``, and the ``candidates`` of their queries
    scored by it and sorted best first: the same passages, judged by another model."""
    rows = [dict(row) for row in rows]
    query_ids = list(dict.fromkeys(row["query_id"] for row in rows))  # a query's rows (noisy, clean) share its vector
    doc_ids = sorted({d for row in rows for d in row["doc_ids"]} | {d for q in query_ids for d, _ in candidates[q]})
    query_vectors = model.encode_queries([queries[q] for q in query_ids], bf16=bf16)
    doc_vectors = model.encode_documents([corpus[d] for d in doc_ids], bf16=bf16)
    scores = query_vectors @ doc_vectors.T
    line, column = {q: i for i, q in enumerate(query_ids)}, {d: j for j, d in enumerate(doc_ids)}
    for row in rows:
        row["teacher_scores"] = [float(scores[line[row["query_id"]], column[d]]) for d in row["doc_ids"]]
    rescored = {
        q: sorted(((d, float(scores[line[q], column[d]])) for d, _ in candidates[q]), key=lambda pair: -pair[1])
        for q in query_ids
    }
    return rows, rescored


def cross_fitted_scores(bench, train, clean_rows, noisy_rows, candidates, work: str):
    """Every row and candidate list scored by a model that never saw its query: the noise benchmark's two
    cross-fitted judges (fine-tuned from the base model with label weakening and the benchmark's budget on the noisy
    rows of one half of the queries each), each judging the other half. What a user can build from the noisy data
    alone."""
    clean_by_query = {row["query_id"]: row for row in clean_rows}
    clean_out, noisy_out, candidates_out = [], [], {}
    for indices, model in shared.cross_fitted_judge_models(bench, noisy_rows, train.corpus, work, bench.seed):
        judged = [noisy_rows[i] for i in indices]
        clean_judged = [clean_by_query[row["query_id"]] for row in judged]
        # one encode of the half's queries and passages scores its noisy and its clean rows
        rows, ranked = rescore(model, judged + clean_judged, candidates, train.queries, train.corpus, bench.bf16)
        noisy_out += rows[: len(judged)]
        clean_out += rows[len(judged) :]
        candidates_out.update(ranked)
    return clean_out, noisy_out, candidates_out


def main(argv: list[str] | None = None) -> int:
    from hf_robust_ir.commands.common import refuse_unwritable_output_file

    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], epilog="Other flags go to noise_robustness.py (its budget and noise)."
    )
    parser.add_argument("--out", required=True)
    parser.add_argument("--rate", type=float, default=0.4)
    parser.add_argument(
        "--judge",
        choices=("base", "cross_fitted", "hybrid"),
        default="base",
        help="who scores the rows: the base model (which chose the wrong positives), two models fine-tuned on "
        "the noisy rows of one half of the queries each, judging the other half, or the base model plus "
        "--lexical_weight x BM25 (label weakening's hybrid guide)",
    )
    args, rest = parser.parse_known_args(argv)
    refuse_unwritable_output_file(parser, args.out)  # before the work, not when the results are written
    bench = shared.parse_args(rest)

    from hf_robust_ir.evaluation import DocumentIndex
    from hf_robust_ir.modeling import BiEncoder, HybridGuide

    began = time.perf_counter()
    train, _ = shared.load_dataset(bench, "scifact")
    base = BiEncoder.from_pretrained(
        bench.model, query_max_length=bench.max_length, document_max_length=bench.max_length
    )
    index = DocumentIndex.from_corpus(base, train.corpus, bf16=bench.bf16, show_progress_bar=False)
    print(f"corpus encoded in {time.perf_counter() - began:.0f} s", file=sys.stderr)
    clean_rows = shared.mine(bench, base, train, index)
    candidates = shared.swap_candidates(bench, base, train, clean_rows, index)
    prepared = shared.Prepared("scifact", train, None, clean_rows, candidates, index, base)
    noisy_rows, _ = shared.noisy_rows(bench, prepared, "semantic_swap", args.rate, bench.seed)
    if args.judge == "cross_fitted":
        with tempfile.TemporaryDirectory(prefix="weakening_rule_analysis_") as work:
            clean_rows, noisy_rows, candidates = cross_fitted_scores(
                bench, train, clean_rows, noisy_rows, candidates, work
            )
    elif args.judge == "hybrid":
        judge = HybridGuide(base, train.corpus, queries=train.queries, lexical_weight=bench.lexical_weight)
        rows, candidates = rescore(
            judge, [*noisy_rows, *clean_rows], candidates, train.queries, train.corpus, bench.bf16
        )
        noisy_rows, clean_rows = rows[: len(noisy_rows)], rows[len(noisy_rows) :]

    def gaps(rows):
        out = {}
        for row in rows:
            labels, scores = np.array(row["labels"]), np.array(row["teacher_scores"])
            out[row["query_id"]] = (float(scores[labels <= 0].max() - scores[labels > 0].max()), row)
        return out

    def positives(row):
        return {d for d, label in zip(row["doc_ids"], row["labels"]) if label > 0}

    clean = gaps(clean_rows)
    noisy = gaps(noisy_rows)
    swapped = {q for q, (_, row) in noisy.items() if positives(row) != positives(clean[q][1])}

    def relevant_negative(query_id, row):
        negative = [d for d, label in zip(row["doc_ids"], row["labels"]) if label <= 0][0]
        return train.qrels.get(query_id, {}).get(negative, 0) > 0

    groups = {
        "clean rows": [g for g, _ in clean.values()],
        "noisy rows, swapped, hard negative is relevant": [
            g for q, (g, row) in noisy.items() if q in swapped and relevant_negative(q, row)
        ],
        "noisy rows, swapped, hard negative not relevant": [
            g for q, (g, row) in noisy.items() if q in swapped and not relevant_negative(q, row)
        ],
        "noisy rows, not swapped": [g for q, (g, _) in noisy.items() if q not in swapped],
    }
    table = {
        name: {
            "queries": len(values),
            "gap_quantiles": {str(p): round(float(np.quantile(values, p)), 4) for p in (0.1, 0.25, 0.5, 0.75, 0.9)},
            "fires_above": {str(t): round(float(np.mean(np.array(values) > t)), 4) for t in THRESHOLDS},
        }
        for name, values in groups.items()
        if values  # a small slice may leave a group empty
    }
    report = {
        "command": "python benchmarks/weakening_rule_analysis.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "rate": args.rate,
        "seed": bench.seed,
        "negative_pool": bench.negative_pool,
        "judge": {
            "base": "base",
            "hybrid": {"hybrid": "the base model + BM25", "lexical_weight": bench.lexical_weight},
            "cross_fitted": {
                "cross_fitted": shared.method_config(shared.CROSS_FIT_LOSS, bench),
                "epochs": bench.epochs,
                "folds": 2,
            },
        }[args.judge],
        "groups": table,
        "candidates": candidate_table(noisy_rows, train.qrels),
        "beyond_row": beyond_row_table(noisy_rows, clean_rows, candidates, train.qrels),
        "true_positive_preferred": true_positive_preferred(noisy_rows, clean_rows),
        "seconds": round(time.perf_counter() - began, 1),
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    for name, row in table.items():
        print(name, row["queries"], row["fires_above"], file=sys.stderr)
    for threshold, row in report["candidates"]["fires_above"].items():
        print(f"candidate gap > {threshold}: {row}", file=sys.stderr)
    print("beyond the row:", json.dumps(report["beyond_row"]), file=sys.stderr)
    print("true positive scored above the wrong label:", report["true_positive_preferred"], file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
