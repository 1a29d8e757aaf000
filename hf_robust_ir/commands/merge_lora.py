"""`hf-robust-ir merge-lora ADAPTER_DIR --out DIR`: fold a saved LoRA adapter into its base weights.

The adapter folder is one ``save_pretrained`` (or a trainer checkpoint, or the output folder of ``hf-robust-ir train``
with ``lora_r``) wrote for a BiEncoder (separate towers included) or a CrossEncoder. ``DIR`` gets the full model,
which loads in ``transformers`` and ``sentence-transformers`` without ``peft``. The adapter's base model is the folder
its ``adapter_config.json`` names, or ``--base_model`` (a local copy of it).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from .common import one_line, output_folder_error, setup_logging

HELP = "merge a saved LoRA adapter into its base model and save the full model (loads without peft)"
ADAPTER_FILE = "adapter_config.json"

logger = logging.getLogger("hf_robust_ir.merge_lora")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("adapter_dir", help="folder of a saved LoRA adapter (BiEncoder or CrossEncoder)")
    parser.add_argument("--out", required=True, help="folder to save the merged full model into")
    parser.add_argument(
        "--base_model", default=None, help="local copy of the base model, if the folder the adapter names has moved"
    )
    parser.add_argument("--trust_remote_code", action="store_true", help="run the model's own code (off by default)")


def adapter_error(folder: Path, out: Path) -> str | None:
    """Why ``folder`` cannot be merged into ``out``, or None."""
    if not folder.is_dir():
        return f"{folder} is not a folder"
    towers = [folder / "query_encoder", folder / "document_encoder"]
    if not (folder / ADAPTER_FILE).is_file() and not any((tower / ADAPTER_FILE).is_file() for tower in towers):
        return f"{folder} holds no LoRA adapter ({ADAPTER_FILE}): nothing to merge"
    problem = output_folder_error(str(out), "--out")
    if problem:
        return problem.removeprefix("error: ")
    if out.exists() and os.path.samefile(out, folder):
        return f"--out {out} is the adapter folder: save the merged model into another folder"
    if (out / ADAPTER_FILE).exists():
        return f"--out {out} holds a LoRA adapter, which loaders would read instead of the merged weights"
    return None


def run(args: argparse.Namespace) -> int:
    setup_logging()
    from ..hub import _model_class

    folder, out = Path(args.adapter_dir), Path(args.out)
    problem = adapter_error(folder, out)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    model_class = _model_class(folder)
    options = {"base_model": args.base_model} if args.base_model else {}  # else the one the adapter names
    try:
        model = model_class.from_pretrained(folder, trust_remote_code=args.trust_remote_code, **options)
        model.merge_lora()
    except (OSError, ValueError) as error:  # a base model that is gone, a folder that is not a model
        print(f"error: {args.adapter_dir}: {one_line(error)}", file=sys.stderr)
        return 2
    model.save_pretrained(out)
    logger.info("Merged the adapter of %s into its base model: %s", folder, out)
    print(json.dumps({"adapter_dir": str(folder), "out": str(out), "model": model_class.__name__}))
    return 0
