"""`hf-robust-ir self-train --config recipe.yaml [--key value ...]`: noisy self-training for N rounds.

The recipe holds the fields of :class:`~hf_robust_ir.self_training.SelfTrainingArguments`. Round 0 fine-tunes the
starting model on the labeled rows (the first teacher); each later round pre-trains a fresh, noisy student on
synthetic queries soft-labeled by the teacher, fine-tunes it on the labeled rows and makes it the next teacher.
Each round's checkpoint (``<output_dir>/round_<r>/model``) and metrics are saved as soon as the round ends, in
``<output_dir>/self_training_state.json``; started again, the command resumes after the last finished round.
Prints ``{"rounds": [...], "selected_round": r, "selected_by": ...}`` on stdout: the best round on
``selection_split`` when the recipe names one (say ``dev``), else the last round.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys

from ..data.schema import DataFormatError
from .common import beir_folder, list_recipe_fields_in_help, load_recipe, setup_logging

HELP = "noisy self-training: teacher -> synthetic queries -> soft labels -> noisy student -> fine-tune, N rounds"
ACCEPTS_OVERRIDES = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML recipe (see recipes/self_training_*.yaml); --key value overrides one")
    list_recipe_fields_in_help(parser, _recipe_field_groups)


def _recipe_field_groups() -> list[tuple[str, type, type | None]]:
    from ..self_training import SelfTrainingArguments

    return [("self-training", SelfTrainingArguments, None)]


def parse_recipe(config_path: str | None, overrides: list[str]):
    from ..self_training import SelfTrainingArguments

    config, where = load_recipe(SelfTrainingArguments, config_path, overrides, outputs={"output_dir": True})
    if "output_dir" not in config:
        raise DataFormatError(*where("output_dir"), "output_dir", "missing (the folder the rounds are saved to)")
    generator = config.get("query_generator", {})
    if generator.get("type", "extractive") not in ("extractive", "hf"):
        raise DataFormatError(*where("query_generator"), "query_generator", "type must be 'extractive' or 'hf'")
    for name in ("pretrain_loss", "finetune_loss"):
        if name in config:
            from ..losses import LOSS_REGISTRY

            if config[name] not in LOSS_REGISTRY:
                raise DataFormatError(*where(name), name, f"unknown loss; losses: {sorted(LOSS_REGISTRY)}")
    fraction = config.get("labeled_fraction", 1.0)
    if not 0 < fraction <= 1:
        raise DataFormatError(*where("labeled_fraction"), "labeled_fraction", "must be in (0, 1]")
    return SelfTrainingArguments(**config)


def run(args: argparse.Namespace) -> int:
    setup_logging()
    try:
        recipe = parse_recipe(args.config, args.overrides)
    except (DataFormatError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from ..self_training import SelfTrainingLoop, selected_round

    loop = SelfTrainingLoop(recipe, beir_folder(recipe.data_dir))
    try:
        with contextlib.redirect_stdout(sys.stderr):  # the trainer prints its logs: stdout is kept for the JSON
            rounds = loop.run()
    except (ValueError, OSError) as exc:  # bad settings, a missing split or model folder
        print(f"error: {exc}", file=sys.stderr)
        return 2
    chosen, how = selected_round(rounds)
    print(json.dumps({"rounds": rounds, "selected_round": chosen["round"] if chosen else None, "selected_by": how}))
    return 0
