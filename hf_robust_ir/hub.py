"""Model cards, push and download: publish a retriever with a card that records how label noise was handled.

- :class:`ModelCardInfo` holds what a card says (base model, training data, loss and its config, relabeling summary,
  noise-benchmark results, non-default hyperparameters, evaluation results, training log, versions, citations);
  :func:`build_model_card` renders ``model_cards/retriever_card.md`` with ``huggingface_hub.ModelCard.from_template``,
  evaluation results go to the ``model-index`` metadata as ``huggingface_hub.EvalResult`` (so the Hub shows them),
  and :func:`validate_model_card` checks the metadata offline (YAML, model-index round trip, Hub ids).
- :func:`push_to_hub` saves a model (only the adapter for a LoRA model, its base model named) with its card and uploads
  it with ``HfApi.create_repo`` + ``HfApi.upload_folder``; a local base-model path is never published (the uploaded
  config names the Hub id given, else null, and the card says "a local model").
- :func:`from_pretrained` / :func:`download` fetch a published model with ``snapshot_download`` (safetensors,
  configs and tokenizer only: never pickles, nor other frameworks' weights) and load a
  :class:`~hf_robust_ir.modeling.BiEncoder` or :class:`~hf_robust_ir.modeling.CrossEncoder` from the saved config
  (pooling, prefixes, normalization).

Safe by default: ``trust_remote_code`` is off unless asked for; tokens come from the argument, ``HF_TOKEN`` or
``huggingface_hub``'s login and are never written (a folder holding the token is refused before upload); repository
ids and paths inside a repository that try to leave their folder are rejected with a ``ValueError``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import tempfile
from dataclasses import dataclass, field
from enum import Enum
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import Any

from .json_files import read_json_file

logger = logging.getLogger(__name__)

TEMPLATE_PATH = Path(__file__).parent / "model_cards" / "retriever_card.md"
CONFIG_NAME = "hf_robust_ir_config.json"
# Pickle-based weight formats: never downloaded, so never unpickled.
PICKLE_PATTERNS = ["*.bin", "*.pt", "*.pth", "*.pkl", "*.pickle", "*.ckpt", "*.joblib", "*.npy", "*.npz"]
# Weights of other frameworks and runtimes (TensorFlow, Flax, Rust, ONNX, GGUF, OpenVINO, Core ML): never loaded here.
OTHER_FORMAT_PATTERNS = [
    "*.h5", "*.keras", "*.tflite", "*.msgpack", "*.ot", "*.onnx", "*.onnx_data", "*.onnx.data", "onnx/*", "*.gguf",
    "openvino/*", "*.xml", "*.mlmodel", "*.mlpackage/*", "coreml/*",
]  # fmt: skip
# Files of an earlier push that a loader would read instead of this push's: weights, an adapter, tower folders.
REPLACED_ON_PUSH_PATTERNS = [
    "*.safetensors", "*.safetensors.index.json", "adapter_config.json", "query_encoder/*", "document_encoder/*",
]  # fmt: skip
REPO_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
SECRET_FIELD = re.compile(r"(^|_)(token|secret|password|passwd|api_key|key|credentials?|auth)s?$", re.IGNORECASE)
# Fields that are paths, hub settings or bookkeeping, not hyperparameters a reader can reuse.
NOT_HYPERPARAMETERS = {
    "output_dir", "logging_dir", "run_name", "hub_model_id", "hub_token", "push_to_hub_token", "hub_strategy",
    "hub_private_repo", "hub_always_push", "hub_revision", "push_to_hub", "resume_from_checkpoint", "deepspeed",
    "fsdp_config", "report_to", "overwrite_output_dir", "do_train", "do_eval", "do_predict",
}  # fmt: skip
VERSION_PACKAGES = (
    "hf_robust_ir", "torch", "transformers", "sentence-transformers", "peft", "huggingface_hub", "datasets",
    "accelerate",
)  # fmt: skip
RELABEL_CITATIONS = {
    "rlhn": (
        "@article{thakur2025rlhn, title={Fixing Data That Hurts Performance: Cascading LLMs to Relabel Hard "
        "Negatives for Robust Information Retrieval}, author={Thakur, Nandan and Zhang, Crystina and Ma, Xueguang "
        "and Lin, Jimmy}, journal={arXiv:2505.16967}, year={2025}}"
    ),
    # the arXiv id only: the entry names no title it cannot vouch for
    "arhn": "@misc{arhn, howpublished={arXiv:2604.11092}, note={ARHN: hard negatives relabeled by answerability}}",
}
METRIC_NAMES = {"ndcg": "nDCG", "recall": "Recall", "mrr": "MRR", "map": "MAP", "precision": "Precision"}


# ---------------------------------------------------------------------------------------------- safety checks
def validate_repo_id(repo_id: str) -> str:
    """Return ``repo_id`` (``name`` or ``namespace/name``) or raise a ``ValueError`` saying what is wrong with it.

    Rejected: empty parts, more than one ``/``, ``..``, ``--``, absolute paths, backslashes, a ``~`` or anything
    outside ``[A-Za-z0-9._-]``; so a repository id can never name a folder outside the cache or ``local_dir``.
    """
    if not isinstance(repo_id, str) or not repo_id:
        raise ValueError(f"invalid repository id {repo_id!r}: expected 'namespace/name'")
    problem = None
    if "\\" in repo_id:
        problem = "it contains a backslash"
    elif repo_id.startswith(("/", "~")):
        problem = "it is an absolute path"
    elif ".." in repo_id or "--" in repo_id:
        problem = "it contains '..' or '--'"
    elif repo_id.count("/") > 1:
        problem = "it has more than one '/'"
    elif any(not part for part in repo_id.split("/")):
        problem = "it has an empty part"
    elif not all(REPO_ID_PATTERN.match(part) for part in repo_id.split("/")):
        problem = "parts must start with a letter or digit and hold only letters, digits, '.', '_' and '-' (<= 96)"
    elif repo_id.endswith(".git"):
        problem = "it ends with '.git'"
    if problem:
        raise ValueError(f"invalid repository id {repo_id!r}: {problem}; expected 'namespace/name'")
    return repo_id


def safe_subpath(root: str | os.PathLike, relative: str) -> Path:
    """``root / relative`` for a relative path that stays inside ``root``, else a ``ValueError``.

    Checked on the path's text (no symlink resolution, as cache snapshots are links into a blob store)."""
    text = str(relative)
    parts = PurePosixPath(text).parts
    if not text or "\\" in text or text.startswith(("/", "~")) or re.match(r"^[A-Za-z]:", text) or ".." in parts:
        raise ValueError(f"path {text!r} would leave the folder {str(root)!r}")
    return Path(root).joinpath(*parts)


def _check_folder_paths(folder: Path) -> None:
    """Reject a downloaded model whose configs point outside its folder (module paths, adapter base models)."""
    for modules_file in [folder / "modules.json", *folder.glob("*/modules.json")]:
        if modules_file.is_file():
            for module in read_json_file(modules_file, list):
                if module.get("path"):
                    safe_subpath(modules_file.parent, module["path"])
    for adapter_file in [folder / "adapter_config.json", *folder.glob("*/adapter_config.json")]:
        if adapter_file.is_file():
            base = read_json_file(adapter_file).get("base_model_name_or_path")
            if base:
                validate_repo_id(base)  # a downloaded adapter names a Hub model, never a local folder


def _known_tokens(token: str | None = None) -> list[str]:
    """The Hub tokens this process holds: the argument, and ``HF_TOKEN`` or the login's token (both when they differ:
    a token passed for one upload does not make the login's token safe to publish)."""
    from huggingface_hub import get_token

    return [t for t in dict.fromkeys([token, get_token()]) if t]


def find_token_in_folder(folder: str | os.PathLike, token: str | None = None) -> list[Path]:
    """Files under ``folder`` holding a Hub token (the argument, ``HF_TOKEN`` or the login's token)."""
    needles = [t.encode() for t in _known_tokens(token)]
    if not needles:
        return []
    leaked = []
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file():
            content = path.read_bytes()  # once, however many tokens are searched for
            if any(needle in content for needle in needles):
                leaked.append(path)
    return leaked


def _redact(text: str, token: str | None = None) -> str:
    for secret in _known_tokens(token):
        text = text.replace(secret, "<redacted>")
    return text


# ---------------------------------------------------------------------------------------------- card content
@dataclass
class ModelCardInfo:
    """What a model card says. Every field is optional; empty ones render as a short "not recorded" line.

    ``datasets``: one dict per training set: ``id`` (Hub dataset id) or ``path``, and optionally ``split``,
    ``rows``, ``queries``, ``corpus_size``, ``description``. ``loss``: the loss's ``config()`` (``name`` + values).
    ``relabel_summary``: what :func:`hf_robust_ir.relabel.runner` writes to ``summary.json`` (judge, per-strategy
    counts), with an optional ``strategy`` naming the one used. ``noise_results``: a list of row dicts (or a dict of
    dicts keyed by row name) from a label-noise benchmark. ``eval_results``: dicts with ``dataset`` (name),
    ``dataset_type`` (Hub id or name), ``split`` and ``metrics`` (``{"ndcg@10": 0.61}``). ``training_log``:
    ``Trainer.state.log_history``-style dicts.
    """

    model_name: str = "hf_robust_ir retriever"
    model_type: str = "bi-encoder"
    base_model: str | None = None
    model_settings: dict[str, Any] = field(default_factory=dict)
    adapter: dict[str, Any] | None = None
    datasets: list[dict[str, Any]] = field(default_factory=list)
    loss: dict[str, Any] | None = None
    loss_schedule: dict[str, Any] | None = None
    relabel_summary: dict[str, Any] | None = None
    noise_results: list[dict[str, Any]] | dict[str, Any] | None = None
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    eval_results: list[dict[str, Any]] = field(default_factory=list)
    training_log: list[dict[str, Any]] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    citations: list[str] = field(default_factory=list)
    repo_id: str | None = None
    language: str | list[str] | None = "en"
    license: str | None = None
    tags: list[str] = field(default_factory=list)


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries a reader needs to reproduce the run."""
    import platform

    versions = {"python": platform.python_version()}
    for name in VERSION_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _plain(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def non_default_hyperparameters(args: Any) -> dict[str, Any]:
    """Fields of a ``TrainingArguments`` (dataclass) that differ from their declared defaults.

    Paths, hub settings and anything named like a secret (``*token``, ``*secret``, ``*password``, ``*key``) are left
    out, and so is any value holding the current Hub token."""
    if not dataclasses.is_dataclass(args):
        return {}
    secrets = _known_tokens(getattr(args, "hub_token", None))
    out: dict[str, Any] = {}
    for f in dataclasses.fields(args):
        name = f.name
        if name.startswith("_") or name in NOT_HYPERPARAMETERS or SECRET_FIELD.search(name):
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = dataclasses.MISSING
        value = getattr(args, name, None)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            if default is None and value == type(value)():
                continue  # filled in from its defaults by __post_init__ (accelerator_config)
            value = dataclasses.asdict(value)
        value = _plain(value)
        if default is not dataclasses.MISSING and (
            value == _plain(default) or (default in (None, "") and value in (None, False, [], {}, ""))
        ):
            continue
        if (
            name.endswith(("_dir", "_path", "_file"))
            or _is_local_path(value)
            or any(secret in json.dumps(value, default=str) for secret in secrets)
        ):
            continue
        out[name] = value
    return out


def _is_local_path(value: Any) -> bool:
    """Whether ``value`` names a local file or folder: an absolute (or ``~``) path, or an existing relative one with
    a ``/`` (a bare word such as ``"gce"`` is a setting even if a file of that name happens to exist)."""
    if not isinstance(value, str) or not value:
        return False
    return Path(value).expanduser().is_absolute() or ("/" in value and Path(value).exists())


def _metric_type(name: str) -> str:
    """``ndcg@10`` -> ``ndcg_at_10`` (the metric ids MTEB results use on the Hub)."""
    return re.sub(r"[^a-z0-9_]", "_", name.lower().replace("@", "_at_"))


def _metric_name(name: str) -> str:
    base, _, k = name.partition("@")
    pretty = METRIC_NAMES.get(base.lower(), base)
    return f"{pretty}@{k}" if k else pretty


def to_eval_results(info: ModelCardInfo) -> list[Any]:
    """``info.eval_results`` as ``huggingface_hub.EvalResult`` objects for the ``model-index``."""
    from huggingface_hub import EvalResult

    task_type = "text-ranking" if info.model_type == "cross-encoder" else "information-retrieval"
    task_name = "Reranking" if info.model_type == "cross-encoder" else "Information Retrieval"
    results = []
    for entry in info.eval_results:
        dataset = str(entry.get("dataset") or "eval")
        for metric, value in entry.get("metrics", {}).items():
            results.append(
                EvalResult(
                    task_type=task_type,
                    task_name=task_name,
                    dataset_type=str(entry.get("dataset_type") or dataset),
                    dataset_name=dataset,
                    dataset_split=entry.get("split"),
                    metric_type=_metric_type(metric),
                    metric_name=_metric_name(metric),
                    metric_value=round(float(value), 6),
                )
            )
    return results


def _is_hub_id(name: str | None) -> bool:
    if not name or Path(name).exists():
        return False
    try:
        validate_repo_id(name)
    except ValueError:
        return False
    return True


def _cell(value: Any) -> str:
    if isinstance(value, float):
        text = f"{value:.4g}" if abs(value) < 1e-3 and value != 0 else f"{value:.4f}".rstrip("0").rstrip(".")
    elif isinstance(value, dict | list):
        text = json.dumps(value, default=str)
    else:
        text = "" if value is None else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    """A Markdown table of ``rows`` (dicts) over ``columns`` (default: every key, in order of appearance)."""
    if not rows:
        return ""
    if columns is None:
        columns = list(dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join(":---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def _key_value_table(values: dict[str, Any], key: str = "name", value: str = "value") -> str:
    return markdown_table([{key: f"`{k}`", value: v} for k, v in values.items()])


def training_log_rows(log_history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per logged step: epoch, step, training loss, learning rate and eval metrics of that step."""
    by_step: dict[int, dict[str, Any]] = {}
    for entry in log_history:
        step = entry.get("step")
        if step is None or "train_runtime" in entry:
            continue
        row = by_step.setdefault(int(step), {"Step": int(step)})
        if entry.get("epoch") is not None:
            row["Epoch"] = round(float(entry["epoch"]), 4)
        for key, value in entry.items():
            if (
                not isinstance(value, int | float)
                or key in ("step", "epoch")
                or key.endswith(("_runtime", "_per_second"))
            ):
                continue
            column = "Training Loss" if key == "loss" else key
            row[column] = value
    rows = [by_step[s] for s in sorted(by_step)]
    columns = list(dict.fromkeys(["Epoch", "Step", "Training Loss", *(k for r in rows for k in r)]))
    return [{c: r.get(c) for c in columns if any(c in x for x in rows)} for r in rows]


def _relabel_text(summary: dict[str, Any]) -> str:
    judge = summary.get("judge") or {}
    lines = []
    name = judge.get("name") if isinstance(judge, dict) else judge
    if name:
        lines.append(f"Candidates were judged by `{name}`" + (":" if judge.get("config") else "."))
        if isinstance(judge, dict) and judge.get("config"):
            lines += ["", _key_value_table(judge["config"], "judge setting"), ""]
    strategies = summary.get("strategies") or {}
    chosen = summary.get("strategy")
    if chosen and chosen in strategies:
        strategies = {chosen: strategies[chosen]}
    if strategies:
        lines.append(f"Strateg{'y' if len(strategies) == 1 else 'ies'} and what changed in the training data:")
        lines += ["", markdown_table([{"strategy": f"`{k}`", **v} for k, v in strategies.items()])]
        changed = sum(int(v.get("labels_changed", 0)) for v in strategies.values())
        lines += ["", f"Labels changed: **{changed}**."]
        removed = sum(int(v.get("candidates_removed", 0)) for v in strategies.values())
        if removed:
            lines[-1] += (
                f" Candidates removed: **{removed}**, kept in the rows' `excluded_doc_ids`: never sampled, mined or"
                " counted as in-batch negatives of their query."
            )
    extra = {k: v for k, v in summary.items() if k in ("queries", "candidates_judged", "judged_pairs", "verdicts")}
    if extra:
        lines += ["", _key_value_table(extra, "relabeling run")]
    return "\n".join(lines)


def _noise_table(results: list[dict[str, Any]] | dict[str, Any]) -> str:
    if isinstance(results, dict):
        if all(isinstance(v, dict) for v in results.values()):
            rows = [{"run": k, **v} for k, v in results.items()]
        else:
            rows = [results]
    else:
        rows = list(results)
    flat = [{k: v for k, v in row.items() if not isinstance(v, dict | list)} for row in rows]
    return markdown_table(flat)


def _eval_table(info: ModelCardInfo) -> str:
    rows = []
    for entry in info.eval_results:
        row = {"dataset": entry.get("dataset"), "split": entry.get("split")}
        row.update({_metric_name(k): v for k, v in entry.get("metrics", {}).items()})
        rows.append(row)
    return markdown_table(rows)


def _datasets_table(info: ModelCardInfo) -> str:
    rows = []
    for entry in info.datasets:
        source = entry.get("id") or entry.get("path")
        row = {
            "dataset": f"[{source}](https://huggingface.co/datasets/{source})"
            if _is_hub_id(entry.get("id"))
            else source
        }
        row.update({k: v for k, v in entry.items() if k not in ("id", "path")})
        rows.append(row)
    return markdown_table(rows)


def usage_snippets(info: ModelCardInfo) -> str:
    """Code that loads the published model in ``sentence-transformers``, ``transformers`` and ``hf_robust_ir``."""
    repo = info.repo_id or info.model_name
    settings = info.model_settings
    if info.model_type == "cross-encoder":
        sentence_transformers_usage = (
            (
                "The repository holds a LoRA adapter, which `sentence_transformers.CrossEncoder` does not load; "
                "`transformers` loads it on top of its base model when `peft` is installed. For "
                "`sentence-transformers`, save the merged model: "
                f'`hf_robust_ir.from_pretrained("{repo}").merge_lora().save_pretrained("merged")`.\n\n'
            )
            if info.adapter
            else (
                "With `sentence-transformers`:\n\n```python\nfrom sentence_transformers import CrossEncoder\n\n"
                f'model = CrossEncoder("{repo}")\n'
                'scores = model.predict([("what is label noise?", "Label noise is ...")])\n```\n\n'
            )
        )
        # an adapter's base may be an encoder, whose config asks for transformers' default two-label head
        head = ", num_labels=1" if info.adapter else ""
        return (
            sentence_transformers_usage + "With `transformers`:\n\n```python\nimport torch\n"
            "from transformers import AutoModelForSequenceClassification, AutoTokenizer\n\n"
            f'tokenizer = AutoTokenizer.from_pretrained("{repo}")\n'
            f'model = AutoModelForSequenceClassification.from_pretrained("{repo}"{head})\n'
            'pairs = tokenizer(["what is label noise?"], ["Label noise is ..."], padding=True, truncation=True, '
            'return_tensors="pt")\nwith torch.no_grad():\n    scores = model(**pairs).logits.squeeze(-1)\n```\n\n'
            "With `hf_robust_ir`:\n\n```python\nimport hf_robust_ir\n\n"
            f'model = hf_robust_ir.from_pretrained("{repo}")\n'
            'scores = model.predict([("what is label noise?", "Label noise is ...")])\n```'
        )
    pooling = settings.get("pooling", "mean")
    normalize = settings.get("normalize", True)
    q_prefix, d_prefix = settings.get("query_prefix", ""), settings.get("document_prefix", "")
    if pooling == "cls":
        pool_code = "    return hidden[:, 0]"
    elif pooling == "lasttoken":
        pool_code = (
            "    last = mask.shape[1] - 1 - mask.flip(1).argmax(1)  # the last real token, left or right padding\n"
            "    return hidden[torch.arange(hidden.shape[0]), last]"
        )
    else:
        pool_code = (
            "    mask = mask.unsqueeze(-1).to(hidden.dtype)\n"
            "    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)"
        )
    norm_code = "    return torch.nn.functional.normalize(vectors, dim=-1)" if normalize else "    return vectors"
    q_length, d_length = settings.get("query_max_length", 256), settings.get("document_max_length", 256)
    adapter_note = (
        "\n\nThe repository holds a LoRA adapter; `transformers` and `sentence-transformers` load it on top of "
        "its base model when `peft` is installed."
        if info.adapter
        else ""
    )
    ours = (
        "With `hf_robust_ir`:\n\n```python\nimport hf_robust_ir\n\n"
        f'model = hf_robust_ir.from_pretrained("{repo}")\n'
        'scores = model.encode_queries(["what is label noise?"]) @ model.encode_documents(["Label noise is ..."]).T\n'
        "```" + adapter_note
    )
    pool_function = "def pool(hidden, mask):\n" + pool_code + "\n\n\n"
    embed_head = (
        "def embed(model, texts, prefix, max_length):\n"
        if settings.get("separate_towers")
        else ("def embed(texts, prefix, max_length):\n")
    )
    embed_function = (
        embed_head + "    batch = tokenizer(\n"
        "        [prefix + t for t in texts], padding=True, truncation=True, max_length=max_length, "
        'return_tensors="pt"\n    )\n'
        "    with torch.no_grad():\n"
        '        vectors = pool(model(**batch).last_hidden_state, batch["attention_mask"])\n' + norm_code + "\n\n\n"
    )
    hf_title = f"With `transformers` ({pooling} pooling{', L2-normalized' if normalize else ''}):\n\n```python\n"
    if settings.get("separate_towers"):  # two towers: a sentence-transformers folder each, in sub-folders
        towers_code = (
            "import torch\nfrom transformers import AutoModel, AutoTokenizer\n\n"
            f'tokenizer = AutoTokenizer.from_pretrained("{repo}", subfolder="query_encoder")\n'
            f'query_model = AutoModel.from_pretrained("{repo}", subfolder="query_encoder")\n'
            f'document_model = AutoModel.from_pretrained("{repo}", subfolder="document_encoder")\n\n\n'
        )
        if info.adapter:  # AutoModel looks for an adapter at the top of a repository only: load each with peft
            towers_code = (
                "import torch\nfrom peft import PeftConfig, PeftModel\n"
                "from transformers import AutoModel, AutoTokenizer\n\n\n"
                "def load_tower(subfolder):  # a LoRA adapter on top of the base model its config names\n"
                f'    base = PeftConfig.from_pretrained("{repo}", subfolder=subfolder).base_model_name_or_path\n'
                "    return PeftModel.from_pretrained(\n"
                f'        AutoModel.from_pretrained(base), "{repo}", subfolder=subfolder\n    )\n\n\n'
                f'tokenizer = AutoTokenizer.from_pretrained("{repo}", subfolder="query_encoder")\n'
                'query_model = load_tower("query_encoder")\n'
                'document_model = load_tower("document_encoder")\n\n\n'
            )
        return (
            "With `sentence-transformers` (the query and document towers are separate models, one folder each; "
            "the prefixes are saved as prompts):\n\n```python\n"
            "from huggingface_hub import snapshot_download\nfrom sentence_transformers import SentenceTransformer\n\n"
            f'folder = snapshot_download("{repo}")\n'
            'query_model = SentenceTransformer(f"{folder}/query_encoder")\n'
            'document_model = SentenceTransformer(f"{folder}/document_encoder")\n'
            'queries = query_model.encode(["what is label noise?"], prompt_name="query")\n'
            'documents = document_model.encode(["Label noise is ..."], prompt_name="document")\n'
            "scores = query_model.similarity(queries, documents)\n```\n\n"
            + hf_title
            + towers_code
            + pool_function
            + embed_function
            + f'queries = embed(query_model, ["what is label noise?"], {q_prefix!r}, {q_length})\n'
            f'documents = embed(document_model, ["Label noise is ..."], {d_prefix!r}, {d_length})\n'
            "scores = queries @ documents.T\n```\n\n" + ours
        )
    # sentence-transformers keeps one max length (saved as the document one): set it for queries, then documents
    one_length = q_length == d_length
    st_query_length = "" if one_length else f"model.max_seq_length = {q_length}  # queries: {q_length} tokens\n"
    st_document_length = "" if one_length else f"model.max_seq_length = {d_length}  # documents: {d_length} tokens\n"
    return (
        "With `sentence-transformers` (the query and document prefixes are saved as prompts):\n\n```python\n"
        "from sentence_transformers import SentenceTransformer\n\n"
        f'model = SentenceTransformer("{repo}")\n'
        + st_query_length
        + 'queries = model.encode(["what is label noise?"], prompt_name="query")\n'
        + st_document_length
        + 'documents = model.encode(["Label noise is ..."], prompt_name="document")\n'
        "scores = model.similarity(queries, documents)\n```\n\n"
        + hf_title
        + "import torch\nfrom transformers import AutoModel, AutoTokenizer\n\n"
        f'tokenizer = AutoTokenizer.from_pretrained("{repo}")\nmodel = AutoModel.from_pretrained("{repo}")\n\n\n'
        + pool_function
        + embed_function
        + f'queries = embed(["what is label noise?"], {q_prefix!r}, {q_length})\n'
        f'documents = embed(["Label noise is ..."], {d_prefix!r}, {d_length})\n'
        "scores = queries @ documents.T\n```\n\n" + ours
    )


def _schedules(schedule: dict[str, Any] | None) -> bool:
    """Whether a loss schedule's config changes anything during training (a constant one, without a confidence
    warm-up, leaves the loss as its config says)."""
    if not schedule:
        return False
    return bool(schedule.get("confidence_warmup_steps")) or (
        schedule.get("parameter") is not None and schedule.get("schedule") != "constant"
    )


def _citations(info: ModelCardInfo) -> list[str]:
    citations = list(info.citations)
    if info.relabel_summary:
        if info.relabel_summary.get("citation"):
            citations.append(info.relabel_summary["citation"])
        else:
            names = [info.relabel_summary.get("strategy"), *(info.relabel_summary.get("strategies") or {})]
            family = "arhn" if any(str(n).startswith("arhn") for n in names if n) else "rlhn"
            citations.append(RELABEL_CITATIONS[family])
    return list(dict.fromkeys(c.strip() for c in citations if c and c.strip()))


def card_data(info: ModelCardInfo) -> Any:
    """The card's metadata as ``huggingface_hub.ModelCardData`` (eval results become the ``model-index``)."""
    from huggingface_hub import ModelCardData

    cross = info.model_type == "cross-encoder"
    tags = ["hf_robust_ir", "retrieval", "label-noise", "cross-encoder" if cross else "sentence-transformers"]
    if info.loss and info.loss.get("name"):
        tags.append(f"loss:{info.loss['name']}")
    if info.adapter:
        tags += ["peft", "lora"]
    datasets = [d["id"] for d in info.datasets if _is_hub_id(d.get("id"))]
    eval_results = to_eval_results(info)
    return ModelCardData(
        base_model=info.base_model if _is_hub_id(info.base_model) else None,
        datasets=datasets or None,
        language=info.language,
        license=info.license,
        library_name="sentence-transformers",
        pipeline_tag="text-ranking" if cross else "sentence-similarity",
        tags=tags + list(info.tags),
        model_name=info.model_name,
        eval_results=eval_results or None,
    )


def build_model_card(info: ModelCardInfo, template_path: str | os.PathLike | None = None) -> Any:
    """Render the card (``huggingface_hub.ModelCard``) from ``model_cards/retriever_card.md``; validated offline."""
    from huggingface_hub import ModelCard

    loss = dict(info.loss or {})
    loss_name = loss.pop("name", None)
    summary = (
        f"A {'reranker (cross-encoder)' if info.model_type == 'cross-encoder' else 'dense retriever (bi-encoder)'} "
        f"fine-tuned with `hf_robust_ir`, which trains retrievers to "
        f"stay good when their training labels are wrong" + (f", from `{info.base_model}`." if info.base_model else ".")
    )
    log_rows = training_log_rows(info.training_log)
    card = ModelCard.from_template(
        card_data(info),
        template_path=str(template_path or TEMPLATE_PATH),
        model_name=info.model_name,
        summary=summary,
        model_type=info.model_type,
        base_model_text=f"`{info.base_model}`" if info.base_model else "not recorded",
        adapter=json.dumps(info.adapter, default=str) if info.adapter else None,
        model_settings={k: f"`{v!r}`" for k, v in info.model_settings.items()},
        datasets_table=_datasets_table(info),
        loss_name=loss_name,
        loss_table=_key_value_table(loss, "setting") if loss else "",
        loss_schedule_table=_key_value_table(info.loss_schedule, "setting") if _schedules(info.loss_schedule) else "",
        relabel_text=_relabel_text(info.relabel_summary) if info.relabel_summary else "",
        noise_table=_noise_table(info.noise_results) if info.noise_results else "",
        hyperparameters_table=_key_value_table(info.hyperparameters, "hyperparameter") if info.hyperparameters else "",
        eval_table=_eval_table(info),
        training_log_table=markdown_table(log_rows),
        usage=usage_snippets(info),
        versions_table=_key_value_table(info.versions or library_versions(), "library", "version"),
        citations=_citations(info),
    )
    card = ModelCard(_redact(str(card)))
    validate_model_card(card)
    return card


def validate_model_card(card: Any) -> None:
    """Check the card's metadata offline with ``huggingface_hub``'s own parsers; raise ``ValueError`` if invalid.

    The YAML must parse, the ``model-index`` must round-trip to the same ``EvalResult`` list, ``base_model`` and
    ``datasets`` must be Hub ids. (``ModelCard.validate`` asks the Hub, which ``push_to_hub`` reaches anyway.)"""
    from huggingface_hub import ModelCard
    from huggingface_hub.repocard_data import eval_results_to_model_index, model_index_to_eval_results

    parsed = ModelCard(str(card))  # raises ValueError on invalid YAML or an unparsable model-index
    data = parsed.data
    if not data.to_dict():
        raise ValueError("model card has no metadata block")
    if data.eval_results:
        index = eval_results_to_model_index(data.model_name, data.eval_results)
        name, again = model_index_to_eval_results(index)
        if name != data.model_name or [r.metric_value for r in again] != [r.metric_value for r in data.eval_results]:
            raise ValueError("model-index does not round-trip through huggingface_hub's EvalResult")
    for base in [data.base_model] if isinstance(data.base_model, str) else data.base_model or []:
        validate_repo_id(base)
    for dataset in [data.datasets] if isinstance(data.datasets, str) else data.datasets or []:
        validate_repo_id(dataset)
    if data.tags is not None and not all(isinstance(t, str) for t in data.tags):
        raise ValueError("model card tags must be strings")


def write_model_card(folder: str | os.PathLike, info: ModelCardInfo) -> Any:
    """Render, validate and write ``README.md`` into ``folder``; returns the ``ModelCard``."""
    card = build_model_card(info)
    Path(folder).mkdir(parents=True, exist_ok=True)
    card.save(Path(folder) / "README.md")
    return card


def model_card_info_from_model(model: Any, **fields: Any) -> ModelCardInfo:
    """A :class:`ModelCardInfo` with the model's type, settings, base model and adapter filled in."""
    from .modeling import CrossEncoder

    config = getattr(model, "retrieval_config", None)
    settings = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else {}
    base_model = fields.pop("base_model", None) or settings.pop("base_model", None)
    settings.pop("base_model", None)
    info = ModelCardInfo(
        model_type="cross-encoder" if isinstance(model, CrossEncoder) else "bi-encoder",
        base_model=base_model,
        model_settings=settings,
        adapter=_adapter_config(model),
        versions=library_versions(),
    )
    for name, value in fields.items():
        setattr(info, name, value)
    return info


def _adapter_config(model: Any) -> dict[str, Any] | None:
    encoder = getattr(model, "query_encoder", None) or getattr(model, "model", None)
    peft_config = getattr(encoder, "peft_config", None)
    if not peft_config:
        return None
    config = next(iter(peft_config.values()))
    keep = ("peft_type", "r", "lora_alpha", "lora_dropout", "target_modules")
    return {
        k: _plain(sorted(v) if isinstance(v, set) else v) for k in keep if (v := getattr(config, k, None)) is not None
    }


# ---------------------------------------------------------------------------------------------- push and download
def _endpoint(endpoint: str | None) -> str | None:
    """The Hub endpoint: the argument, else ``HF_ENDPOINT`` read now (``huggingface_hub`` reads it at import)."""
    value = endpoint or os.environ.get("HF_ENDPOINT")
    return value.rstrip("/") if value else None


def push_to_hub(
    model: Any,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    commit_message: str = "Upload retriever with hf_robust_ir",
    card: Any = None,
    base_model: str | None = None,
    revision: str | None = None,
    endpoint: str | None = None,
) -> str:
    """Save ``model`` (safetensors; only the adapter for a LoRA model) and its card, and upload them to ``repo_id``.

    ``card``: a ``ModelCard``, a :class:`ModelCardInfo`, a path to a ``README.md``, or None for a card built from
    the model; its usage snippets are written for ``model`` in ``repo_id``. ``base_model``: the Hub id of the base
    model (required for a LoRA model whose base is a local folder; written into the adapter config and the card); for
    separate towers each on its own tower of a base model, the id of that model (pushed with its towers), on whose
    ``query_encoder/`` and ``document_encoder/`` each tower's adapter loads again.
    ``repo_id``: ``namespace/name``, or a bare name for a repository in the token owner's namespace.
    ``token``: default ``HF_TOKEN`` or ``huggingface_hub``'s login; a folder holding the token is never uploaded.
    ``revision``: the branch to commit to, made from main if it does not exist yet (a ``refs/pr/N`` pull request must
    exist). The commit deletes the weights, adapter and tower folders of an earlier push that this one does not
    write. Returns the commit URL.
    """
    from huggingface_hub import HfApi, ModelCard

    validate_repo_id(repo_id)
    is_adapter = _adapter_config(model) is not None
    if base_model is not None:
        validate_repo_id(base_model)
    with tempfile.TemporaryDirectory(prefix="hf_robust_ir_push_") as tmp:
        folder = Path(tmp)
        model.save_pretrained(folder, safe_serialization=True)
        for tower_card in folder.glob("*/README.md"):  # peft's placeholder card, naming the local base model
            tower_card.unlink()
        if is_adapter:
            base_model = _name_adapter_base(folder, base_model)
        local_paths = _hide_local_base_model(folder, base_model)
        if isinstance(card, str | os.PathLike) and Path(card).is_file():
            card = ModelCard.load(Path(card))
        elif isinstance(card, str | os.PathLike):
            raise FileNotFoundError(f"model card {str(card)!r} not found")
        elif card is None or isinstance(card, ModelCardInfo):
            info = card or model_card_info_from_model(model, model_name=repo_id.split("/")[-1])
            info.repo_id, info.model_name = repo_id, info.model_name or repo_id.split("/")[-1]
            if base_model:
                info.base_model = base_model
            elif info.base_model and not _is_hub_id(info.base_model):
                local_paths.append(info.base_model)
            card = build_model_card(info)
        if base_model and card.data.base_model != base_model:
            card.data.base_model = base_model
        card = _card_without_local_paths(card, local_paths, base_model)

        def save_card(card: Any, repo_id: str) -> None:
            card = _card_with_usage(card, model_card_info_from_model(model, repo_id=repo_id))
            validate_model_card(card)
            card.save(folder / "README.md")
            leaked = find_token_in_folder(folder, token)
            if leaked:
                raise RuntimeError(f"refusing to upload: the Hub token appears in {[p.name for p in leaked]}")

        save_card(card, repo_id)
        api = HfApi(endpoint=_endpoint(endpoint), token=token)
        created = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model").repo_id
        if created != repo_id:  # a name without namespace: the repository is the token owner's, as the Hub made it
            repo_id = created
            save_card(card, repo_id)
        if revision is not None and not revision.startswith("refs/pr/"):  # the Hub refuses commits to a missing branch
            api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
        info = api.upload_folder(
            folder_path=str(folder),
            repo_id=repo_id,
            repo_type="model",
            commit_message=commit_message,
            revision=revision,
            ignore_patterns=PICKLE_PATTERNS,
            delete_patterns=REPLACED_ON_PUSH_PATTERNS,
        )
    logger.info("Pushed %s to %s", "adapter" if is_adapter else "model", repo_id)
    return str(getattr(info, "commit_url", info))


def _name_adapter_base(folder: Path, base_model: str | None) -> str:
    """Write ``base_model`` into every saved ``adapter_config.json`` (or check the one there is a Hub id).

    Separate towers whose adapters name different local base folders must be on the ``query_encoder/`` and
    ``document_encoder/`` towers of one model: ``base_model`` then names that model's repository, and each tower's
    adapter loads on its own tower there (see :func:`hf_robust_ir.modeling.bi_encoder.adapter_base_folder`)."""
    adapter_files = [f for f in [folder / "adapter_config.json", *folder.glob("*/adapter_config.json")] if f.is_file()]
    _check_tower_bases(folder, adapter_files)
    for adapter_file in adapter_files:
        config = json.loads(adapter_file.read_text())
        named = base_model or config.get("base_model_name_or_path")
        if not _is_hub_id(named):
            raise ValueError(
                f"a LoRA adapter is pushed with the Hub id of its base model; {named!r} is not one "
                "(pass base_model='namespace/name')"
            )
        base_model = named
        config["base_model_name_or_path"] = named
        adapter_file.write_text(json.dumps(config, indent=2) + "\n")
    robust_config = folder / CONFIG_NAME
    if robust_config.is_file() and base_model:
        settings = json.loads(robust_config.read_text())
        settings["base_model"] = base_model
        robust_config.write_text(json.dumps(settings, indent=2) + "\n")
    assert base_model is not None
    return base_model


def _check_tower_bases(folder: Path, adapter_files: list[Path]) -> None:
    """A ``ValueError`` for tower adapters whose local base folders are not the same-named towers of one model: one
    repository id could not name the base of each."""
    bases = {
        f.parent.name: read_json_file(f).get("base_model_name_or_path") for f in adapter_files if f.parent != folder
    }
    local = {tower: base for tower, base in bases.items() if base and not _is_hub_id(base)}
    if len(set(local.values())) < 2:
        return  # one base for both towers (or Hub ids already)
    parents = {Path(base).parent for base in local.values()}
    if len(parents) == 1 and all(Path(base).name == tower for tower, base in local.items()):
        return  # the towers of one model, which base_model names
    raise ValueError(
        f"the towers' adapters are on different base models ({', '.join(f'{t}: {b}' for t, b in local.items())}), "
        "not the towers of one model that one Hub id could name; merge_lora() and push the full weights"
    )


def _hide_local_base_model(folder: Path, base_model: str | None) -> list[str]:
    """Name the base model in the saved ``hf_robust_ir_config.json`` by its Hub id: ``base_model`` if given, the saved
    one if it is a Hub id, else null (a local path is never published). Returns the local path it removed, if any."""
    config_file = folder / CONFIG_NAME
    if not config_file.is_file():
        return []
    settings = json.loads(config_file.read_text())
    saved = settings.get("base_model")
    if "base_model" in settings:
        settings["base_model"] = base_model or (saved if _is_hub_id(saved) else None)
        config_file.write_text(json.dumps(settings, indent=2) + "\n")
    return [saved] if saved and not _is_hub_id(saved) else []


_ABSOLUTE_PATH = re.compile(r"(?<![\w:/.~-])/(?:[\w.\-]+/)*[\w.\-]+")


def _card_without_local_paths(card: Any, local_paths: list[str], base_model: str | None) -> Any:
    """The card with each local base-model path replaced by ``base_model`` (a Hub id) or "a local model", and any
    other absolute path of this machine (a training-data folder or file, say) by its last part."""
    from huggingface_hub import ModelCard

    text = str(card)
    name = f"`{base_model}`" if base_model else "a local model"
    for path in sorted(set(local_paths), key=len, reverse=True):
        text = text.replace(f"`{path}`", name).replace(path, name)
    text = _ABSOLUTE_PATH.sub(lambda m: Path(m.group()).name if Path(m.group()).exists() else m.group(), text)
    return card if text == str(card) else ModelCard(text)


def _card_with_usage(card: Any, info: ModelCardInfo) -> Any:
    """The card with its "Usage" section's snippets rewritten for ``info`` (the model pushed and its repository)."""
    from huggingface_hub import ModelCard

    text = str(card)
    usage = re.compile(r"(?<=\n## Usage\n\n).*?(?=\n\n## |\Z)", re.S)
    updated = usage.sub(lambda _: usage_snippets(info), text, count=1)
    return card if updated == text else ModelCard(updated)


def download(
    repo_id: str,
    local_dir: str | os.PathLike | None = None,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    token: str | None = None,
    endpoint: str | None = None,
) -> Path:
    """Download a published model (configs, tokenizer, safetensors; no pickle files, no other frameworks' weights)
    and return its folder; a ``ValueError`` for a repository without safetensors weights, naming those it has."""
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.utils import filter_repo_objects

    validate_repo_id(repo_id)
    if revision is not None and (".." in revision or revision.startswith("/") or "\\" in revision):
        raise ValueError(f"invalid revision {revision!r}")
    path = snapshot_download(
        repo_id,
        repo_type="model",
        revision=revision,
        cache_dir=str(cache_dir) if cache_dir else None,
        local_dir=str(local_dir) if local_dir else None,
        token=token,
        endpoint=_endpoint(endpoint),
        ignore_patterns=PICKLE_PATTERNS + OTHER_FORMAT_PATTERNS,
    )
    folder = Path(path)
    _check_folder_paths(folder)
    if not any(folder.rglob("*.safetensors")):
        files = HfApi(endpoint=_endpoint(endpoint), token=token).list_repo_files(repo_id, revision=revision)
        skipped = list(filter_repo_objects(files, allow_patterns=PICKLE_PATTERNS + OTHER_FORMAT_PATTERNS))
        only = f" (only {skipped}, never downloaded: pickle files and other frameworks' weights are not loaded)"
        raise ValueError(f"{repo_id} has no safetensors weights" + (only if skipped else ""))
    return folder


def from_pretrained(
    repo_id_or_path: str | os.PathLike,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    trust_remote_code: bool = False,
    *,
    token: str | None = None,
    endpoint: str | None = None,
    **overrides: Any,
) -> Any:
    """Load a BiEncoder or CrossEncoder from a local folder or a Hub repository (downloaded with :func:`download`).

    The model kind, pooling, prefixes and normalization come from the saved ``hf_robust_ir_config.json`` (or the
    sentence-transformers files); a LoRA repository's base model is downloaded the same way. ``trust_remote_code``
    stays off unless set; weights load from safetensors only.
    """
    local = Path(repo_id_or_path)
    if local.is_dir():
        folder, from_hub = local, False
    elif local.exists():
        raise ValueError(f"{str(repo_id_or_path)!r} is a file; pass a model folder or a Hub repository id")
    else:
        try:
            validate_repo_id(str(repo_id_or_path))
        except ValueError as error:
            raise ValueError(f"{str(repo_id_or_path)!r} is not a local folder, and {error}") from None
        folder, from_hub = (
            download(str(repo_id_or_path), revision=revision, cache_dir=cache_dir, token=token, endpoint=endpoint),
            True,
        )
    model_class = _model_class(folder)
    base = _adapter_base(folder)
    if base and from_hub and not Path(base).exists():
        local_base = download(base, cache_dir=cache_dir, token=token, endpoint=endpoint)
        model = model_class.from_pretrained(
            folder, trust_remote_code=trust_remote_code, base_model=str(local_base), **overrides
        )
        if model_class.__name__ == "BiEncoder":
            model.retrieval_config.base_model = base
        return model
    return model_class.from_pretrained(folder, trust_remote_code=trust_remote_code, **overrides)


def _adapter_base(folder: Path) -> str | None:
    for adapter_file in [folder / "adapter_config.json", *folder.glob("*/adapter_config.json")]:
        if adapter_file.is_file():
            return read_json_file(adapter_file).get("base_model_name_or_path")
    return None


def _model_class(folder: Path) -> type:
    """BiEncoder for a BiEncoder / sentence-transformers / encoder folder, CrossEncoder for a reranker folder."""
    from .modeling import BiEncoder, CrossEncoder

    if (folder / "modules.json").exists() or (folder / "query_encoder").is_dir():
        return BiEncoder
    if (folder / CONFIG_NAME).exists() and "max_length" in read_json_file(folder / CONFIG_NAME):
        return CrossEncoder
    config_file = folder / "config.json"
    if config_file.exists():
        architectures = read_json_file(config_file).get("architectures") or []
        if any(a.endswith("ForSequenceClassification") for a in architectures):
            return CrossEncoder
    return BiEncoder
