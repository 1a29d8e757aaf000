"""`hf-robust-ir` command line: one subcommand per module in ``hf_robust_ir.commands``.

Each command module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``; a module with
``ACCEPTS_OVERRIDES = True`` receives unknown ``--key value`` pairs as ``args.overrides``.
Progress goes to stderr; machine-readable results (JSON) go to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
from collections.abc import Iterator

COMMANDS = (
    "train", "eval", "mine", "noise", "score", "relabel", "synthesize", "self-train", "download", "merge-lora",
)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-robust-ir", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f"hf_robust_ir.commands.{name.replace('-', '_')}")
        sub = subparsers.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(sub)
        sub.set_defaults(_run=module.run, _accepts_overrides=getattr(module, "ACCEPTS_OVERRIDES", False))
    return parser


@contextlib.contextmanager
def _progress_bars(shown: bool) -> Iterator[None]:
    """With ``shown`` False (a command's ``--quiet``), also silence the bars ``datasets`` draws while saving or
    mapping rows and those ``transformers`` draws while loading or saving weights; the previous settings are restored
    afterwards."""
    import datasets
    from transformers.utils import logging as transformers_logging

    were_shown = datasets.is_progress_bar_enabled(), transformers_logging.is_progress_bar_enabled()
    if not shown:
        datasets.disable_progress_bars()
        transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if not shown:
            if were_shown[0]:
                datasets.enable_progress_bars()
            if were_shown[1]:
                transformers_logging.enable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not args._accepts_overrides:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.overrides = extra
    from .data.schema import DataFormatError
    from .relabel.backends import EndpointRefusedError

    try:
        with _progress_bars(not getattr(args, "quiet", False)):
            return int(args._run(args) or 0)
    # bad input (the file, line and field) or a chat endpoint's settings, without a traceback
    except (DataFormatError, FileNotFoundError, EndpointRefusedError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # a model whose embeddings are NaN or infinite (mining, training's evaluation, ...)
        evaluation = sys.modules.get("hf_robust_ir.evaluation")  # only loaded by the commands that can raise it
        if evaluation is None or not isinstance(exc, evaluation.NonFiniteEmbeddingError):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # a command's own stop with a message (bad input too): one "error:" line, status 2
        if not isinstance(exc.code, str):
            raise
        print(exc.code if exc.code.startswith("error:") else f"error: {exc.code}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
