"""`hf-robust-ir synthesize --config recipe.yaml [--key value ...]`: graded synthetic documents (SyCL) as a BEIR folder.

For every query of ``split`` a chat model (a local causal LM, ``backend: {type: hf, model: DIR}``, or an
OpenAI-compatible server, ``backend: {type: openai, base_url: ..., model: ...}``) writes passages at relevance grades
0-3 (:class:`~hf_robust_ir.synthetic.GradedDocumentGenerator`). The output folder is a BEIR folder that ``train``
reads like any other: ``corpus.jsonl`` (the source corpus), ``corpus.<split>.jsonl`` (the synthetic passages, which
join the corpus of ``split`` alone), ``queries.jsonl``, ``qrels/<split>.tsv`` with the grades (and the real positives
at grade 3 when ``include_real_positives``), the other qrels splits copied unchanged (so evaluation runs on the real
test set over the source corpus, as published numbers are), plus ``rows.jsonl`` (canonical rows,
``label_source = synthetic``) and ``summary.json``. Generation is resumable: finished queries are appended to
``generated.partial.jsonl`` and skipped by a restarted run; the file names the generator's settings, the split and a
digest of the split's queries and their positives, and a restart with other ones (another data folder, say) is refused.

A query is finished when at least one of its passages was written. A query none of whose passages came (the server
went down, requests timed out, every answer was empty) is not recorded: it is left out of this run's folder, counted
in the summary's ``queries_to_retry`` and logged, and the next run with the same ``output_dir`` asks for it again. A
query with some failed passages is finished with the passages it got and is not asked again (their count is the
summary's ``failed_passages``): retrying only the failed ones would ask again, on every run, for a passage that a model
never writes for that query, and a run could never be told to be complete; delete the query's lines from
``generated.partial.jsonl`` to have it written again.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..data.schema import DataFormatError
from .common import beir_folder, below_least, list_recipe_fields_in_help, load_recipe, setup_logging

HELP = "write graded synthetic documents (grades 0-3) for the queries of a BEIR split with a chat model (SyCL)"
ACCEPTS_OVERRIDES = True
PARTIAL_NAME = "generated.partial.jsonl"

logger = logging.getLogger("hf_robust_ir.synthesize")


@dataclass
class SynthesizeArguments:
    output_dir: str = field(metadata={"help": "the BEIR folder to write (resumed when it holds a partial run)"})
    backend: dict = field(
        default_factory=lambda: {"type": "hf"},
        metadata={"help": "the chat model: {type: hf, model: DIR} or {type: openai, base_url: URL, model: NAME}"},
    )
    data_dir: str | None = field(default=None, metadata={"help": "BEIR folder of the queries and the corpus"})
    dataset_name: str = field(
        default="scifact", metadata={"help": "sub-folder of $HF_ROBUST_IR_DATA, when no data_dir"}
    )
    split: str = field(default="train", metadata={"help": "qrels split of the queries to write passages for"})
    grades: list = field(
        default_factory=lambda: [0, 1, 2, 3], metadata={"help": "relevance grades to write a passage of, per query"}
    )
    documents_per_grade: int = field(default=1, metadata={"help": "passages per query and grade"})
    max_new_tokens: int = field(default=256, metadata={"help": "token limit of one generated passage"})
    include_real_positives: bool = field(
        default=True, metadata={"help": "the query's labeled positives join its rows at grade 3, beside the passages"}
    )
    max_queries: int | None = field(default=None, metadata={"help": "write passages for the first N queries only"})
    batch_size: int = field(default=16, metadata={"help": "requests per generation batch"})
    chunk_queries: int = field(default=64, metadata={"help": "queries generated between two progress saves"})
    show_progress_bar: bool = field(default=True, metadata={"help": "progress bars on stderr"})

    def __post_init__(self):
        found = below_least(vars(self), LEAST_VALUES)
        if found:
            raise ValueError(" ".join(found))


LEAST_VALUES = dict.fromkeys(("documents_per_grade", "max_new_tokens", "max_queries", "batch_size", "chunk_queries"), 1)
"""Arguments that count something and must be >= 1 (``max_queries`` may be None: every query)."""


def build_backend(spec: dict[str, Any]) -> Any:
    """A chat backend from ``{"type": "hf", "model": DIR, ...}`` or ``{"type": "openai", "base_url", "model", ...}``."""
    from ..relabel.backends import HFCausalLMBackend, OpenAICompatibleBackend

    kwargs = {k: v for k, v in spec.items() if k != "type"}
    kind = spec.get("type")
    if kind == "hf":
        if "model" not in kwargs:
            raise ValueError("backend: type hf needs 'model' (a local causal LM folder)")
        return HFCausalLMBackend(kwargs.pop("model"), **kwargs)
    if kind == "openai":
        return OpenAICompatibleBackend(**kwargs)
    raise ValueError(f"backend type must be 'hf' or 'openai', got {kind!r}")


def parse_recipe(config_path: str | None, overrides: list[str]) -> SynthesizeArguments:
    config, where = load_recipe(
        SynthesizeArguments, config_path, overrides, least=LEAST_VALUES, outputs={"output_dir": True}
    )
    if "output_dir" not in config:
        raise DataFormatError(*where("output_dir"), "output_dir", "missing (the BEIR folder to write)")
    if config.get("backend", {}).get("type") not in ("hf", "openai"):
        raise DataFormatError(*where("backend"), "backend", "type must be 'hf' or 'openai'")
    return SynthesizeArguments(**config)


def _queries_digest(data: Any) -> str:
    """A digest of the split's queries (ids and texts) and their positives: what the finished records were made
    from (every query of the split, so that ``max_queries`` may change on resume)."""
    judged = [[q, data.queries[q], sorted(d for d, grade in data.qrels[q].items() if grade > 0)] for q in data.qrels]
    return hashlib.sha256(json.dumps(sorted(judged)).encode("utf-8")).hexdigest()


def _read_partial(path: Path, header: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The finished queries of an earlier run. The file opens with ``header`` (the generator's settings, the split
    and the queries' digest); a file written with other settings or for other queries is refused, not mixed in. A
    record without any passage (``"row": null``, which earlier versions wrote for a query whose requests all failed)
    is not a finished query: that query is asked again."""
    done: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return done
    header = json.loads(json.dumps(header))
    seen_header = False
    for line_number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut by an interruption: that query is generated again
            continue
        if not seen_header:
            settings = {k: v for k, v in header.items() if k != "queries"}
            # a header without the queries' digest was written before the check: its settings alone are compared
            if record != header and record != settings:
                if {k: v for k, v in record.items() if k != "queries"} == settings:
                    what = "for other queries (another data folder, or its queries or qrels changed)"
                else:
                    what = f"with other settings ({record} against {header})"
                raise ValueError(
                    f"{path} line {line_number}: written {what}; rerun with those settings, or delete the file or use"
                    " another output_dir"
                )
            seen_header = True
            continue
        if record.get("row"):
            done[record["query_id"]] = record
    return done


def synthesize(args: SynthesizeArguments, data_dir: Path, backend: Any = None) -> dict[str, Any]:
    """Generate, resume, and write the BEIR folder; returns the summary."""
    from ..data import load_beir
    from ..data.beir import load_corpus, split_corpus_path
    from ..data.progress_file import open_for_append
    from ..synthetic import GradedDocumentGenerator

    data = load_beir(data_dir, split=args.split)
    query_ids = sorted(data.qrels)
    if args.max_queries is not None:
        query_ids = query_ids[: args.max_queries]
    positives = {q: [d for d, grade in data.qrels[q].items() if grade > 0] for q in query_ids}
    generator = GradedDocumentGenerator(
        backend if backend is not None else build_backend(args.backend),
        grades=args.grades,
        max_new_tokens=args.max_new_tokens,
        documents_per_grade=args.documents_per_grade,
        include_real_positives=args.include_real_positives,
    )
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    partial = out / PARTIAL_NAME
    header = {"generator": generator.config(), "split": args.split, "queries": _queries_digest(data)}
    done = _read_partial(partial, header)
    todo = [q for q in query_ids if q not in done]
    logger.info("%d queries, %d already generated", len(query_ids), len(query_ids) - len(todo))
    with open_for_append(partial) as handle:
        if handle.tell() == 0:
            handle.write(json.dumps(header) + "\n")
        for start in range(0, len(todo), args.chunk_queries):
            chunk = todo[start : start + args.chunk_queries]
            rows, documents, _ = generator.generate_rows(
                {q: data.queries[q] for q in chunk},
                positives={q: positives[q] for q in chunk},
                corpus=data.corpus,
                batch_size=args.batch_size,
                show_progress=args.show_progress_bar,
            )
            for row in rows:  # a query without any passage has no row: it is not recorded, and a rerun asks again
                q = row["query_id"]
                texts = {d: documents[d] for d in row["doc_ids"] if d in documents}
                done[q] = {"query_id": q, "row": row, "documents": texts}
                handle.write(json.dumps(done[q]) + "\n")
            handle.flush()

    finished = [q for q in query_ids if q in done]
    retry = len(query_ids) - len(finished)
    if retry:
        logger.warning(
            "%d of %d queries got no passage (every request failed or gave an empty answer) and are left out; the next"
            " run with output_dir %s asks for them again",
            retry,
            len(query_ids),
            out,
        )
    per_query = len(generator.grades) * generator.documents_per_grade
    failed = sum(per_query - len(done[q]["documents"]) for q in finished)
    if failed:
        logger.info("%d passage(s) failed in queries that got others; those queries are kept without them", failed)
    rows = [done[q]["row"] for q in finished]
    synthetic = {d: t for q in finished for d, t in done[q]["documents"].items()}
    shutil.copyfile(data_dir / "corpus.jsonl", out / "corpus.jsonl")
    split_file = split_corpus_path(out, args.split)
    for other in data_dir.glob("corpus.*.jsonl"):  # the source's passages of other splits stay theirs
        if other.name != split_file.name:
            shutil.copyfile(other, out / other.name)
    # the passages join the corpus of this split only (with the source's own passages of it): every other split is
    # searched over the source corpus
    source_ids = set(load_corpus(data_dir))
    split_only = {doc_id: text for doc_id, text in data.corpus.items() if doc_id not in source_ids}
    with split_file.open("w", encoding="utf-8") as corpus_file:
        for doc_id, text in {**split_only, **synthetic}.items():
            corpus_file.write(json.dumps({"_id": doc_id, "title": "", "text": text}) + "\n")
    shutil.copyfile(data_dir / "queries.jsonl", out / "queries.jsonl")
    (out / "qrels").mkdir(exist_ok=True)
    for qrels_file in (data_dir / "qrels").glob("*.tsv"):
        if qrels_file.stem != args.split:
            shutil.copyfile(qrels_file, out / "qrels" / qrels_file.name)
    lines = [f"{row['query_id']}\t{d}\t{int(label)}" for row in rows for d, label in zip(row["doc_ids"], row["labels"])]
    (out / "qrels" / f"{args.split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(f"{x}\n" for x in lines))
    (out / "rows.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    grades: dict[str, int] = {}
    for row in rows:
        for label, source in zip(row["labels"], row["label_source"]):
            if source == "synthetic":
                grades[str(int(label))] = grades.get(str(int(label)), 0) + 1
    summary = {
        "output": str(out),
        "source": str(data_dir.resolve()),
        "split": args.split,
        "queries": len(query_ids),
        "rows": len(rows),
        "queries_to_retry": retry,
        "failed_passages": failed,
        "synthetic_documents": len(synthetic),
        "synthetic_documents_per_grade": dict(sorted(grades.items())),
        "generator": generator.config(),
        "arguments": {k: v for k, v in asdict(args).items() if k != "backend"},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML recipe (see recipes/synthesize_graded_scifact.yaml); --key value")
    list_recipe_fields_in_help(parser, lambda: [("synthesis", SynthesizeArguments, None)])


def run(args: argparse.Namespace) -> int:
    setup_logging()
    try:
        recipe = parse_recipe(args.config, args.overrides)
        summary = synthesize(recipe, beir_folder(recipe.data_dir, recipe.dataset_name))
    except (DataFormatError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0
