"""What the commands share: logging to stderr, reading recipes, checks of input paths, loading a BiEncoder."""

from __future__ import annotations

import functools
import logging
import os
import re
import shutil
import sys
import textwrap
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any

MINING_FILTER_HELP = {
    "range_min": "skip the first non-positive ranks",
    "range_max": "mine among the non-positive ranks below this",
    "absolute_margin": "keep a mined negative if its score <= the positive's - margin",
    "relative_margin": "keep a mined negative if its score <= the positive's - |positive's| x margin (e.g. 0.05)",
    "max_score": "keep a mined negative if its score <= this",
    "min_score": "keep a mined negative if its score >= this",
}
"""What each positive-aware filter of :func:`~hf_robust_ir.mining.mine_hard_negatives` keeps, for the help of every
command and recipe field that sets one."""


def setup_logging() -> None:
    """Library progress at INFO on stderr (stdout is kept for the command's JSON)."""
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("hf_robust_ir").setLevel(logging.INFO)


def input_error(data_dir: Path, model: str | None = None) -> str | None:
    """A message for a missing BEIR folder or model folder, or None when both are there."""
    if not data_dir.is_dir():
        return f"error: --data {str(data_dir)!r} is not a folder (expected a BEIR folder)"
    if model is not None and not Path(model).exists():
        return f"error: --model {model!r} does not exist (pass a local model folder)"
    return None


def close_process_group() -> None:
    """After a successful distributed run: wait for every process, then tear the process group down.

    Without the barrier a process can exit while another still receives its last collective; under gloo the peer
    then aborts with "terminate called without an active exception" (pytorch/pytorch#65231). Not called after an
    error: a barrier that the failed process never reaches would hang the others.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def output_file_error(path: str | None, flag: str) -> str | None:
    """An error line when a file a command will write cannot be written there: the path is a folder, or a parent
    of it is a file. Checked before the work starts, so that a long run does not end in the error."""
    problem = output_path_problem(path, folder=False)
    return None if problem is None else f"error: {flag} {path!r} {problem}"


def refuse_unwritable_output_file(parser: Any, path: str | None, flag: str = "--out") -> None:
    """``parser.error`` (exit status 2) when :func:`output_file_error` finds a problem with ``path``: for scripts
    that write their results file only when their runs end."""
    problem = output_file_error(path, flag)
    if problem:
        parser.error(problem.removeprefix("error: "))


def output_folder_error(path: str | None, flag: str) -> str | None:
    """An error line when a folder a command will write cannot be made there: the path is a file, or a parent of it
    is. Checked before the work starts (mining, scoring, training), so that a long run does not end in the error."""
    problem = output_path_problem(path, folder=True)
    return None if problem is None else f"error: {flag} {path!r} {problem}"


def output_path_problem(path: str | None, folder: bool) -> str | None:
    """Why a command cannot write the file (``folder`` False) or the folder (True) ``path``, or None: the path is of
    the other kind, or one of its parents is a file."""
    if path is None:
        return None
    target = Path(path)
    if folder and target.exists() and not target.is_dir():
        return "is a file; give a folder"
    if not folder and target.is_dir():
        return "is a folder; give a file name"
    parent = next((p for p in target.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        return f"cannot be made: {str(parent)!r} is a file, not a folder"
    return None


def cross_encoder_error(model: str, flag: str = "--model") -> str | None:
    """A message when ``model`` is a cross-encoder (reranker) folder: it scores pairs and cannot encode texts (read as
    a bi-encoder, its classification head would be dropped and its encoder used untrained for the task)."""
    from ..hub import _model_class
    from ..modeling import CrossEncoder

    if _model_class(Path(model)) is CrossEncoder:
        return f"error: {flag} {model!r} is a cross-encoder (reranker) folder; this command needs a bi-encoder"
    return None


def no_relevant_error(data: Any, split: str, what: str) -> str | None:
    """A message when no query of the split has a relevant document (an empty split, only grade-0 judgments)."""
    if any(grade > 0 for judged in data.qrels.values() for grade in judged.values()):
        return None
    return f"error: qrels/{split}.tsv judges no query with a relevant document: nothing to {what}"


DATA_ENV = "HF_ROBUST_IR_DATA"


def beir_folder(data_dir: str | None, dataset_name: str = "scifact") -> Path:
    """``data_dir``, else ``$HF_ROBUST_IR_DATA/<dataset_name>``; exits with a message unless it is a BEIR folder."""
    if data_dir:
        folder = Path(data_dir)
    elif os.environ.get(DATA_ENV):
        folder = Path(os.environ[DATA_ENV]) / dataset_name
    else:
        raise SystemExit(f"error: no data: set data_dir, or {DATA_ENV} to a folder holding {dataset_name}/")
    if not (folder / "corpus.jsonl").is_file():
        raise SystemExit(f"error: {folder} is not a BEIR folder (no corpus.jsonl)")
    return folder


def load_bi_encoder(model: str, max_length: int | None = None):
    """A BiEncoder, with both max lengths set to ``max_length`` when given."""
    from ..modeling import BiEncoder

    overrides = {} if max_length is None else {"query_max_length": max_length, "document_max_length": max_length}
    return BiEncoder.from_pretrained(model, **overrides)


def _key_lines(text: str) -> dict[str, int]:
    import yaml

    node = yaml.compose(text)
    if node is None or not isinstance(node, yaml.MappingNode):
        return {}
    return {key.value: key.start_mark.line + 1 for key, _ in node.value}


_EXPONENT_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _exponent_float(value: Any, annotation: str) -> Any:
    """``value`` as a float when a float field holds a number like ``1e-5``, which YAML 1.1 reads as a string."""
    if isinstance(value, str) and annotation.split("|")[0].strip() == "float" and _EXPONENT_NUMBER.fullmatch(value):
        return float(value)
    return value


def _check_type(name: str, value: Any, annotation: str) -> str | None:
    expected = {
        "str": (str,),
        "int": (int,),
        "float": (int, float),
        "bool": (bool,),
        "dict": (dict,),
        "list": (list,),
    }
    optional = "None" in annotation
    if value is None:
        return None if optional else "must not be null"
    base = annotation.split("|")[0].strip()
    types = expected.get(base)
    if types is None or (isinstance(value, bool) and base in ("int", "float")):
        return None if types is None else f"expected {base}, got a boolean"
    return None if isinstance(value, types) else f"expected {base}, got {type(value).__name__}"


def one_line(message: object) -> str:
    """``message`` with its line breaks and runs of spaces as single spaces, for a one-line error."""
    return " ".join(str(message).split())


def _yaml_problem(exc: Exception) -> tuple[int | None, str]:
    """``(line, one-line message)`` of a YAML error. An error found only at the end of the file (an unclosed ``[`` or
    quote) is reported at the line of the construct left open."""
    mark, context_mark = getattr(exc, "problem_mark", None), getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context = getattr(exc, "context", None)
    at_end = mark is not None and mark.buffer is not None and mark.index >= len(mark.buffer) - 1
    if context and context_mark is not None and at_end:
        return context_mark.line + 1, f"{problem} ({context})"
    if context and context_mark is not None:
        problem += f" ({context} started on line {context_mark.line + 1})"
    return (mark.line + 1 if mark else None), problem


def read_recipe(config_path: str) -> tuple[dict[str, Any], dict[str, int]]:
    """The mapping a YAML recipe file holds and the line of each top-level key; a missing file raises
    FileNotFoundError, anything else :class:`~hf_robust_ir.data.schema.DataFormatError` naming the file and line."""
    import yaml

    from ..data.schema import DataFormatError

    path = Path(config_path)
    if not path.is_file():
        raise FileNotFoundError(f"recipe {config_path!r} not found")
    text = path.read_text(encoding="utf-8")
    try:
        config = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        line, problem = _yaml_problem(exc)
        raise DataFormatError(config_path, line, None, f"invalid YAML: {problem}") from None
    if not isinstance(config, dict):
        raise DataFormatError(config_path, None, None, "a recipe is a mapping of argument names to values")
    return config, _key_lines(text)


def _override_value(name: str, text: str) -> Any:
    """A ``--key value`` override's value read as YAML; invalid YAML raises a one-line
    :class:`~hf_robust_ir.data.schema.DataFormatError` naming the override."""
    import yaml

    from ..data.schema import DataFormatError

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]  # lines of a one-line value say nothing
        raise DataFormatError("command line", None, name, f"invalid YAML value {text!r}: {problem}") from None


def below_least(values: Mapping[str, Any], least: Mapping[str, int]) -> tuple[str, str] | None:
    """The first field of ``least`` whose value in ``values`` is below its least value, with the problem; None when
    none is (a missing or None value is no limit)."""
    for name, bound in least.items():
        value = values.get(name)
        if value is not None and value < bound:
            return name, f"must be >= {bound}, got {value}"
    return None


def list_recipe_fields_in_help(parser: Any, groups: Callable[[], list[tuple[str, type, type | None]]]) -> None:
    """Make ``--help`` of a recipe command end with the recipe's fields: for each ``(title, dataclass, base)`` of
    ``groups()`` (called when help is asked for, so that no heavy module loads before), the fields of the dataclass
    that ``base`` (None: none) does not already have, each with its type, default and help."""
    format_help = parser.format_help

    def with_fields() -> str:
        width = max(shutil.get_terminal_size().columns - 2, 60)
        wrap = functools.partial(textwrap.fill, width=width, initial_indent=" " * 4, subsequent_indent=" " * 8)
        text = ["recipe fields (keys of the YAML recipe; --key value on the command line overrides one):"]
        for title, arguments, base in groups():
            inherited = {f.name for f in fields(base)} if base is not None else set()
            text.append(f"  {title}:")
            for item in fields(arguments):
                if item.init and item.name not in inherited:
                    text.append(wrap(_field_line(arguments, item)))
        return format_help() + "\n" + "\n".join(text) + "\n"

    parser.format_help = with_fields


def _field_line(arguments: type, item: Any) -> str:
    """``name (type, default value): help`` of a dataclass field; ``required`` where it has no default."""
    if item.default is not MISSING:
        default = f"default {item.default!r}"
    elif item.default_factory is not MISSING:
        default = f"default {item.default_factory()!r}"
    else:
        default = "required"
    help_text = item.metadata.get("help")
    return f"{item.name} ({_annotation(arguments, item.name)}, {default})" + (f": {help_text}" if help_text else "")


def _annotation(arguments: type, name: str) -> str:
    """The type of the field ``name`` of the dataclass ``arguments`` as written (``"float | None"``), whether or not
    its module postpones annotations. Read from the class, not from the field: ``transformers.HfArgumentParser``
    rewrites the fields' types in place (``str | None`` becomes ``str``)."""
    for cls in arguments.__mro__:
        annotations = cls.__dict__.get("__annotations__", {})
        if name in annotations:
            written = annotations[name]
            return written if isinstance(written, str) else getattr(written, "__name__", str(written))
    return "Any"


@dataclass(frozen=True)
class RecipeFields:
    """Where each field of a recipe was set, for errors that name it: ``where(name)`` is ``("command line", None)``
    for a field an override set (or with no recipe file), else ``(recipe file, line of the field)``."""

    path: str | None
    lines: Mapping[str, int]
    overridden: frozenset[str] = frozenset()

    def __call__(self, name: str | None) -> tuple[str, int | None]:
        if name in self.overridden or not self.path:
            return "command line", None
        return self.path, self.lines.get(name) if name else None


def load_recipe(
    arguments: type,
    config_path: str | None,
    overrides: list[str],
    least: Mapping[str, int] | None = None,
    outputs: Mapping[str, bool] | None = None,
) -> tuple[dict[str, Any], RecipeFields]:
    """A YAML recipe plus ``--key value`` overrides (values read as YAML), checked against the fields of the
    dataclass ``arguments`` (for the fields of ``least``, against their least value; for the fields of ``outputs``,
    paths the command writes, that a folder (True) or a file (False) can be made there): ``(config, where each field
    was set)``. Errors name the file and the line, or the command line, and the field
    (:class:`~hf_robust_ir.data.schema.DataFormatError`)."""
    from ..data.schema import DataFormatError

    config: dict[str, Any] = {}
    lines: dict[str, int] = {}
    if config_path:
        config, lines = read_recipe(config_path)
    overridden: set[str] = set()
    i = 0
    while i < len(overrides):
        key = overrides[i]
        if not key.startswith("--") or i + 1 >= len(overrides):
            raise DataFormatError("command line", None, key, "expected --key value pairs")
        name = key[2:].replace("-", "_")
        config[name] = _override_value(name, overrides[i + 1])
        overridden.add(name)
        i += 2
    where = RecipeFields(config_path, lines, frozenset(overridden))
    known = {f.name: _annotation(arguments, f.name) for f in fields(arguments)}
    for name, value in config.items():
        if name not in known:
            raise DataFormatError(*where(name), name, f"unknown field; fields: {sorted(known)}")
        config[name] = value = _exponent_float(value, known[name])
        problem = _check_type(name, value, known[name])
        if problem:
            raise DataFormatError(*where(name), name, problem)
    found = below_least(config, least or {})
    if found:
        raise DataFormatError(*where(found[0]), *found)
    for name, folder in (outputs or {}).items():
        problem = output_path_problem(config.get(name), folder)
        if problem:
            raise DataFormatError(*where(name), name, f"{config[name]!r} {problem}")
    return config, where
