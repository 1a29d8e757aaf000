"""`hf-robust-ir relabel --config recipe.yaml [--key value ...]`: judge the negatives of training rows, relabel them.

The recipe holds the fields of :class:`RelabelArguments`. Rows come from ``rows`` (canonical jsonl / parquet /
``save_to_disk`` folder over the BEIR corpus of ``data_dir``, or any shape :func:`load_training_data` reads), or,
without ``rows``, from the qrels of ``split`` plus hard negatives mined with ``mining_model``. Writes
``<output_dir>/<strategy>/`` (``save_to_disk``), ``<output_dir>/<strategy>.jsonl`` and ``<output_dir>/summary.json``
(also printed on stdout); judgments are cached in ``cache_path`` (default ``<output_dir>/judgments.sqlite``), so a
killed run started again continues where it stopped. With ``push_to_hub`` each strategy's dataset goes to
``hub_repo_id`` as one configuration; the token comes from the environment or ``huggingface_hub`` login only.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..data.schema import DataFormatError
from .common import MINING_FILTER_HELP, RecipeFields, list_recipe_fields_in_help, load_recipe, one_line, setup_logging

if TYPE_CHECKING:
    from ..relabel.base import Judge

HELP = "relabel false negatives of training rows with a judge (rlhn, hn_remove, remove, threshold, arhn) from a recipe"
DATA_ENV = "HF_ROBUST_IR_DATA"
ACCEPTS_OVERRIDES = True

logger = logging.getLogger("hf_robust_ir.relabel")


@dataclass
class RelabelArguments:
    output_dir: str = field(metadata={"help": "folder of the relabeled datasets, summary.json and the judgment cache"})
    judge: dict = field(
        default_factory=lambda: {"type": "embedding"},
        metadata={"help": "the judge: {type: embedding|cross_encoder|generative|openai|cascade|arhn, ...its settings}"},
    )
    strategies: list = field(
        default_factory=lambda: ["rlhn", "hn_remove", "remove"],
        metadata={"help": "relabeling strategies, one dataset each: rlhn, hn_remove, remove, threshold, arhn_f|r|rf"},
    )
    max_flagged: int | None = field(
        default=8, metadata={"help": "drop a query with more flagged negatives than this (null: never)"}
    )
    rows: str | None = field(
        default=None, metadata={"help": "training rows to relabel (jsonl, parquet, save_to_disk folder); else mined"}
    )
    rows_format: str = field(
        default="auto",
        metadata={"help": "shape of rows: auto, canonical, sentence-transformers, tevatron, flagembedding, beir"},
    )
    data_dir: str | None = field(default=None, metadata={"help": "BEIR folder whose corpus holds the rows' texts"})
    dataset_name: str | None = field(
        default=None, metadata={"help": "sub-folder of $HF_ROBUST_IR_DATA, when no data_dir"}
    )
    split: str = field(default="train", metadata={"help": "qrels split of the queries"})
    max_queries: int | None = field(default=None, metadata={"help": "relabel the first N queries only"})
    mining_model: str | None = field(
        default=None, metadata={"help": "model folder that mines negatives when no rows are given (default: MiniLM)"}
    )
    num_negatives: int = field(default=15, metadata={"help": "negatives mined per query"})
    mining_range_min: int = field(default=0, metadata={"help": MINING_FILTER_HELP["range_min"]})
    mining_range_max: int = field(default=100, metadata={"help": MINING_FILTER_HELP["range_max"]})
    mining_absolute_margin: float | None = field(default=None, metadata={"help": MINING_FILTER_HELP["absolute_margin"]})
    mining_relative_margin: float | None = field(default=None, metadata={"help": MINING_FILTER_HELP["relative_margin"]})
    encode_batch_size: int = field(default=64, metadata={"help": "batch size of the mining encodes"})
    max_candidates: int | None = field(
        default=None, metadata={"help": "judge at most the first N negatives of each row (the rest keep their labels)"}
    )
    batch_size: int = field(default=32, metadata={"help": "rows per judge call and per cache transaction"})
    cache_path: str | None = field(
        default=None, metadata={"help": "judgment cache file (default: <output_dir>/judgments.sqlite)"}
    )
    push_to_hub: bool = field(default=False, metadata={"help": "push each strategy's dataset to hub_repo_id"})
    hub_repo_id: str | None = field(default=None, metadata={"help": "Hub dataset repository, 'namespace/name'"})
    hub_private: bool = field(default=True, metadata={"help": "make the pushed repository private"})
    show_progress_bar: bool = field(default=True, metadata={"help": "progress bars on stderr"})


LEAST_VALUES = {
    "batch_size": 1,
    "encode_batch_size": 1,
    "max_candidates": 1,
    "max_queries": 1,
    "max_flagged": 0,
    "mining_range_min": 0,
}
"""Fields that count something and their least value (``None`` where allowed: no limit)."""


def parse_recipe(config_path: str | None, overrides: list[str]) -> RelabelArguments:
    """Recipe file + ``--key value`` overrides (values read as YAML) -> :class:`RelabelArguments`; errors name the
    file, line and field."""
    return read_relabel_recipe(config_path, overrides)[0]


def read_relabel_recipe(config_path: str | None, overrides: list[str]) -> tuple[RelabelArguments, RecipeFields]:
    """:func:`parse_recipe` plus where each field was set, for later errors."""
    config, where = load_recipe(
        RelabelArguments, config_path, overrides, least=LEAST_VALUES, outputs={"output_dir": True, "cache_path": False}
    )
    if "output_dir" not in config:
        raise DataFormatError(*where("output_dir"), "output_dir", "missing (the folder the relabeled datasets go to)")
    if config.get("push_to_hub") and not config.get("hub_repo_id"):
        raise DataFormatError(*where("push_to_hub"), "hub_repo_id", "push_to_hub needs a hub_repo_id")
    args = RelabelArguments(**config)
    if args.mining_range_max <= args.mining_range_min:  # mining keeps ranks range_min <= rank < range_max
        problem = f"must be > mining_range_min ({args.mining_range_min}), got {args.mining_range_max}"
        raise DataFormatError(*where("mining_range_max"), "mining_range_max", problem)
    from ..relabel.strategies import get_strategy

    if not args.strategies:
        raise DataFormatError(*where("strategies"), "strategies", "no relabeling strategy given")
    for name in args.strategies:
        try:
            strategy = get_strategy(name)
        except ValueError as exc:
            raise DataFormatError(*where("strategies"), "strategies", str(exc)) from None
        try:
            strategy.check_max_flagged(args.max_flagged)
        except ValueError as exc:
            raise DataFormatError(*where("max_flagged"), "max_flagged", str(exc)) from None
    return args, where


def arhn_judge_error(strategies: list[str], judge: Judge, source: str, line: int | None) -> DataFormatError | None:
    """The error for ARHN strategies given a judge without ``arhn_labels`` (they read its marks), else None."""
    from ..relabel.strategies import get_strategy

    arhn = [name for name in strategies if get_strategy(name).arhn]
    if not arhn or callable(getattr(judge, "arhn_labels", None)):
        return None
    problem = f"strategies {arhn} need a judge that gives ARHN labels (type: arhn); {judge.name!r} gives none"
    return DataFormatError(source, line, "judge", problem)


def build_recipe_judge(spec: dict, source: str, line: int | None) -> Judge:
    """The recipe's judge. Settings it refuses (a misspelled or missing key, a bad value, a missing model folder)
    raise :class:`DataFormatError` naming the recipe, the line of ``judge`` and the key."""
    from ..relabel.factory import build_judge

    try:
        return build_judge(spec)
    except TypeError as exc:  # a key the judge's (or its backend's, its model's) constructor does not take
        message = one_line(exc)
        named = (path for path in _key_paths(spec) if f"'{path.split('.')[-1]}'" in message)
        key = next(named, None) if re.search(r"unexpected keyword argument|unknown", message) else None
        if key is not None:
            raise DataFormatError(source, line, "judge", f"unknown setting {key!r}: {message}") from None
        if re.search(r"missing \d+ required .*argument", message):
            raise DataFormatError(source, line, "judge", f"missing setting: {message}") from None
        raise
    except (ValueError, OSError, ImportError) as exc:
        raise DataFormatError(source, line, "judge", one_line(exc).removeprefix("judge: ")) from None


def _key_paths(spec: Any, prefix: str = "") -> list[str]:
    """Dotted paths of every key in a nested mapping, outer keys first."""
    if not isinstance(spec, dict):
        return []
    paths = [prefix + str(key) for key in spec]
    for key, value in spec.items():
        paths += _key_paths(value, f"{prefix}{key}.")
    return paths


def resolve_data_dir(args: RelabelArguments) -> Path | None:
    if args.data_dir:
        return Path(args.data_dir)
    if args.dataset_name:
        if not os.environ.get(DATA_ENV):
            raise SystemExit(f"dataset_name={args.dataset_name!r} needs ${DATA_ENV} (or pass data_dir)")
        return Path(os.environ[DATA_ENV]) / args.dataset_name
    return None


def load_rows(args: RelabelArguments):
    """``(rows, corpus)`` from ``rows`` (+ the BEIR corpus of ``data_dir``) or from qrels + mining."""
    from ..data import load_beir, load_training_data

    data_dir = resolve_data_dir(args)
    if data_dir is not None and not (data_dir / "corpus.jsonl").is_file():
        raise SystemExit(f"error: {data_dir} is not a BEIR folder (no corpus.jsonl)")
    if args.rows:
        corpus = load_beir(data_dir, split=args.split).corpus if data_dir is not None else None
        data = load_training_data(args.rows, format=args.rows_format, corpus=corpus, split=args.split)
        rows, corpus = data.rows, data.corpus
    else:
        if data_dir is None:
            raise SystemExit("error: no rows: set rows, or data_dir / dataset_name to mine rows from qrels")
        from ..data import rows_from_qrels
        from ..mining import mine_hard_negatives
        from .common import load_bi_encoder
        from .train import _first_queries

        train = _first_queries(load_beir(data_dir, split=args.split), args.max_queries)
        if args.num_negatives <= 0:
            rows = rows_from_qrels(train)
        else:
            from ..relabel.factory import _default_model

            rows = mine_hard_negatives(
                load_bi_encoder(args.mining_model or _default_model()),
                train,
                num_negatives=args.num_negatives,
                range_min=args.mining_range_min,
                range_max=args.mining_range_max,
                absolute_margin=args.mining_absolute_margin,
                relative_margin=args.mining_relative_margin,
                batch_size=args.encode_batch_size,
                show_progress_bar=args.show_progress_bar,
            )
        corpus = train.corpus
    if args.max_queries is not None and len(rows) > args.max_queries:
        rows = rows.select(range(args.max_queries))
    return rows, corpus


def push(result, args: RelabelArguments) -> None:
    """Each strategy's dataset as a configuration of ``hub_repo_id``, plus the summary file."""
    from huggingface_hub import HfApi

    for name, dataset in result.datasets.items():
        dataset.push_to_hub(args.hub_repo_id, config_name=name, private=args.hub_private)
    HfApi().upload_file(
        path_or_fileobj=json.dumps(result.summary, indent=2).encode("utf-8"),
        path_in_repo="relabel_summary.json",
        repo_id=args.hub_repo_id,
        repo_type="dataset",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML recipe (see recipes/relabel_*.yaml); --key value overrides a field")
    list_recipe_fields_in_help(parser, lambda: [("relabeling", RelabelArguments, None)])


def run(args: argparse.Namespace) -> int:
    setup_logging()
    try:
        recipe, where = read_relabel_recipe(args.config, args.overrides)
    except (DataFormatError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from ..cli import _progress_bars

    with _progress_bars(recipe.show_progress_bar):  # datasets' own bars (loading, map, filter, saving) too
        return _relabel(recipe, where)


def _relabel(recipe: RelabelArguments, where: RecipeFields) -> int:
    from ..relabel.cache import JudgmentCache
    from ..relabel.runner import relabel

    start = time.perf_counter()
    try:
        judge = build_recipe_judge(recipe.judge, *where("judge"))  # a bad judge stops before mining
        error = arhn_judge_error(recipe.strategies, judge, *where("judge"))
        if error is not None:
            raise error
        rows, corpus = load_rows(recipe)
    except (DataFormatError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(recipe.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    cache_path = recipe.cache_path or str(out / "judgments.sqlite")
    logger.info("Relabeling %d queries with %s (cache %s)", len(rows), judge.name, cache_path)
    with JudgmentCache(cache_path) as cache:
        result = relabel(
            rows,
            corpus,
            judge,
            recipe.strategies,
            cache,
            batch_size=recipe.batch_size,
            max_candidates=recipe.max_candidates,
            max_flagged=recipe.max_flagged,
            show_progress_bar=recipe.show_progress_bar,
        )
    result.summary["source"] = recipe.rows or str(resolve_data_dir(recipe))
    result.save(out)
    if recipe.push_to_hub:
        push(result, recipe)
        result.summary["hub_repo_id"] = recipe.hub_repo_id
    logger.info("Relabeled in %.1f s", time.perf_counter() - start)
    print(json.dumps(result.summary))
    return 0
