"""Noisy self-training loop: rounds, soft labels from the teacher, resuming, the `self-train` command."""

import json

import numpy as np
import pytest

import hf_robust_ir.self_training as self_training
from hf_robust_ir.cli import main
from hf_robust_ir.commands.self_train import parse_recipe
from hf_robust_ir.data.schema import DataFormatError
from hf_robust_ir.modeling import BiEncoder
from hf_robust_ir.self_training import SelfTrainingArguments, SelfTrainingLoop, sample_labeled_queries, selected_round

TOPICS = ["paris france capital", "water boils degrees", "moon orbits earth", "bananas yellow fruit", "cats sleep"]


def _beir(tmp_path):
    folder = tmp_path / "beir"
    (folder / "qrels").mkdir(parents=True)
    corpus = {}
    for t, topic in enumerate(TOPICS):
        for k in range(3):
            corpus[f"d{t}{k}"] = f"This passage number {k} is about {topic}. It says more words about {topic} here."
    (folder / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": d, "title": "", "text": text}) + "\n" for d, text in corpus.items())
    )
    queries = {f"q{t}": f"tell me about {topic}" for t, topic in enumerate(TOPICS)}
    queries.update({f"t{t}": f"what about {topic}" for t, topic in enumerate(TOPICS)})
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in queries.items()))
    train = "".join(f"q{t}\td{t}0\t1\n" for t in range(len(TOPICS)))
    test = "".join(f"t{t}\td{t}1\t1\n" for t in range(len(TOPICS)))
    (folder / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\n" + train)
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + test)
    return folder


def _args(tmp_path, model, **overrides):
    settings = dict(
        output_dir=str(tmp_path / "out"),
        model=model,
        rounds=1,
        labeled_fraction=0.6,
        synthetic_passages=6,
        candidates_per_query=3,
        pretrain_group_size=3,
        hard_negatives=1,
        mining_range_max=4,
        batch_size=4,
        max_length=32,
        encode_batch_size=8,
        show_progress_bar=False,
        training_kwargs={"use_cpu": True},
    )
    settings.update(overrides)
    return SelfTrainingArguments(**settings)


def test_labeled_fraction_is_a_seeded_sample(tmp_path):
    import datasets

    rows = datasets.Dataset.from_list([{"query_id": str(i)} for i in range(10)])
    three = sample_labeled_queries(rows, 0.3, seed=0)
    assert len(three) == 3 and three["query_id"] == sample_labeled_queries(rows, 0.3, seed=0)["query_id"]
    assert three["query_id"] == sorted(three["query_id"], key=int)  # original order kept
    assert sample_labeled_queries(rows, 1.0, seed=0) is rows
    # the same queries listed in another order (another qrels file's line order): the same queries are sampled
    backwards = datasets.Dataset.from_list([{"query_id": str(i)} for i in reversed(range(10))])
    assert sorted(sample_labeled_queries(backwards, 0.3, seed=0)["query_id"]) == sorted(three["query_id"])
    with pytest.raises(ValueError, match="labeled_fraction"):
        sample_labeled_queries(rows, 0.0, seed=0)


def test_rounds_soft_labels_and_resume(tiny_model_path, tmp_path, monkeypatch):
    beir = _beir(tmp_path)
    loop = SelfTrainingLoop(_args(tmp_path, tiny_model_path), beir)
    stages: list[tuple[str, int]] = []
    for stage in ("pretrain", "finetune"):
        real = getattr(SelfTrainingLoop, stage)

        def spy(self, model, rows, corpus, folder, _real=real, _stage=stage):
            stages.append((_stage, len(rows)))
            if _stage == "pretrain":  # soft labels: the teacher's top-3 plus the source passage, teacher scores
                row = rows[0]
                assert len(row["doc_ids"]) == 4 and row["labels"] == [1.0, 0.0, 0.0, 0.0]
                teacher = BiEncoder.from_pretrained(
                    str(tmp_path / "out" / "round_0" / "model"), query_max_length=32, document_max_length=32
                )
                query = teacher.encode_queries([row["query"]])[0]
                documents = teacher.encode_documents([corpus[d] for d in row["doc_ids"]])
                np.testing.assert_allclose(row["teacher_scores"], documents @ query, atol=1e-4)
            return _real(self, model, rows, corpus, folder)

        monkeypatch.setattr(SelfTrainingLoop, stage, spy)
    rounds = loop.run()
    # round 0: the teacher fine-tuned on 3 of 5 labeled queries; round 1: 6 synthetic queries, then the 3 labeled
    assert stages == [("finetune", 3), ("pretrain", 6), ("finetune", 3)]
    assert [r["round"] for r in rounds] == [0, 1] and rounds[1]["teacher"] == rounds[0]["checkpoint"]
    assert all(0.0 <= r["metrics"]["ndcg@10"] <= 1.0 for r in rounds)
    assert selected_round(rounds) == (rounds[1], "last round")  # no selection split: never chosen on the test labels
    for r in rounds:
        assert BiEncoder.from_pretrained(r["checkpoint"]) is not None
    card = (tmp_path / "out" / "round_1" / "model" / "README.md").read_text()
    assert "self_training_round" in card and "kl_distillation" in card and "shuffle" in card
    synthetic = (tmp_path / "out" / "synthetic_queries.jsonl").read_text().splitlines()
    assert len(synthetic) == 6 and all(json.loads(line)["label_source"] == ["synthetic"] for line in synthetic)

    # resume with one more round: rounds 0 and 1 are not trained again; round 2's teacher is round 1's student
    stages.clear()
    more = SelfTrainingLoop(_args(tmp_path, tiny_model_path, rounds=2), beir).run()
    assert stages == [("pretrain", 6), ("finetune", 3)]
    assert [r["round"] for r in more] == [0, 1, 2] and more[2]["teacher"] == more[1]["checkpoint"]
    assert more[:2] == rounds
    # resumed with fewer rounds than finished: the rounds asked for, and the last of them is the one selected
    fewer = SelfTrainingLoop(_args(tmp_path, tiny_model_path, rounds=1), beir).run()
    assert fewer == rounds and selected_round(fewer) == (rounds[1], "last round")
    # other settings in the same folder are refused, not mixed
    with pytest.raises(ValueError, match="other settings"):
        SelfTrainingLoop(_args(tmp_path, tiny_model_path, rounds=2, learning_rate=1e-3), beir).run()


def test_recipe_errors_name_line_and_field(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("output_dir: out\nrounds: two\n")
    with pytest.raises(DataFormatError) as err:
        parse_recipe(str(recipe), [])
    assert err.value.line == 2 and err.value.field == "rounds"
    recipe.write_text("output_dir: out\npretrain_loss: kl_distilation\n")
    with pytest.raises(DataFormatError, match="line 2, field 'pretrain_loss'"):
        parse_recipe(str(recipe), [])
    recipe.write_text("output_dir: out\nquery_generator: {type: gpt}\n")
    with pytest.raises(DataFormatError, match="query_generator"):
        parse_recipe(str(recipe), [])
    with pytest.raises(DataFormatError, match="output_dir"):
        parse_recipe(None, ["--rounds", "1"])
    args = parse_recipe(None, ["--output_dir", "x", "--labeled_fraction", "0.3", "--student_noise", "{kind: mask}"])
    assert args.labeled_fraction == 0.3 and args.student_noise == {"kind": "mask"}


def test_cli_runs_and_reports_the_selected_round(tiny_model_path, tmp_path, capsys, monkeypatch):
    beir = _beir(tmp_path)
    recipe = tmp_path / "recipe.yaml"
    settings = {k: v for k, v in vars(_args(tmp_path, tiny_model_path, rounds=0)).items()}
    settings["data_dir"] = str(beir)
    import yaml

    recipe.write_text(yaml.safe_dump(settings))
    assert main(["self-train", "--config", str(recipe)]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["selected_round"] == 0 and printed["selected_by"] == "last round" and len(printed["rounds"]) == 1
    assert main(["self-train", "--config", str(recipe), "--roundz", "1"]) == 2
    assert "roundz" in capsys.readouterr().err
    elsewhere = ["--output_dir", str(tmp_path / "other")]  # the first run's state would refuse other settings
    assert main(["self-train", "--config", str(recipe), *elsewhere, "--eval_split", "dev"]) == 2
    assert capsys.readouterr().err.startswith(f"error: {beir / 'qrels' / 'dev.tsv'} not found")
    assert main(["self-train", "--config", str(recipe), *elsewhere, "--model", str(tmp_path / "no_model")]) == 2
    assert "no_model" in capsys.readouterr().err
    assert self_training.STATE_NAME in {p.name for p in (tmp_path / "out").iterdir()}


def test_hf_query_generator_is_fine_tuned_on_the_labeled_pairs_first(tmp_path):
    from conftest import minilm_path
    from test_synthetic_queries import tiny_t5
    from transformers import AutoTokenizer

    from hf_robust_ir.self_training import build_query_generator
    from hf_robust_ir.synthetic import HFQueryGenerator

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    base = tmp_path / "t5"
    tiny_t5(tokenizer).save_pretrained(base)
    tokenizer.save_pretrained(base)
    pairs = [(f"passage {i} about topic {i}", f"topic {i}") for i in range(4)]
    config = {"type": "hf", "model_name_or_path": str(base), "train_on_labeled": True, "max_new_tokens": 4}
    config["training"] = {"max_steps": 2, "per_device_train_batch_size": 2, "use_cpu": True}
    generator = build_query_generator(config, pairs, tmp_path / "trained")
    assert isinstance(generator, HFQueryGenerator) and (tmp_path / "trained" / "config.json").exists()
    assert generator.config()["model"] == str(tmp_path / "trained")  # the fine-tuned copy, not the base
    assert len(generator.generate(["passage 9 about topic 9"], num_queries=1)) == 1
    with pytest.raises(ValueError, match="train_on_labeled"):
        build_query_generator(config)


def test_pretraining_settings_reach_the_pretraining_stage_only(tiny_model_path, tmp_path, monkeypatch):
    seen: list[tuple[str, int, float]] = []
    real = SelfTrainingLoop._train

    def spy(self, model, rows, corpus, training_args):
        seen.append((training_args.output_dir.rsplit("/", 1)[-1], training_args.max_steps, training_args.loss))
        return real(self, model, rows, corpus, training_args)

    monkeypatch.setattr(SelfTrainingLoop, "_train", spy)
    hard_and_soft = {"losses": [{"name": "infonce", "weight": 1.0}, {"name": "kl_distillation", "weight": 0.5}]}
    args = _args(
        tmp_path,
        tiny_model_path,
        pretrain_loss="weighted_sum",
        pretrain_loss_kwargs=hard_and_soft,
        pretrain_training_kwargs={"max_steps": 1},
    )
    SelfTrainingLoop(args, _beir(tmp_path)).run()
    # round 0 fine-tunes (no step limit), round 1 pre-trains one step with the combined loss, then fine-tunes
    assert seen == [("finetune", -1, "infonce"), ("pretrain", 1, "weighted_sum"), ("finetune", -1, "infonce")]
    card = (tmp_path / "out" / "round_1" / "model" / "README.md").read_text()
    assert "weighted_sum" in card and "kl_distillation" in card


def test_the_round_is_chosen_on_the_selection_split_never_on_the_evaluation_split():
    rounds = [
        {"round": 0, "metrics": {"ndcg@10": 0.9}, "selection_metrics": {"ndcg@10": 0.5}},
        {"round": 1, "metrics": {"ndcg@10": 0.7}, "selection_metrics": {"ndcg@10": 0.6}},
        {"round": 2, "metrics": {"ndcg@10": 0.8}, "selection_metrics": {"ndcg@10": 0.4}},
    ]
    assert selected_round(rounds) == (rounds[1], "selection split ndcg@10")
    unscored = [{k: v for k, v in r.items() if k != "selection_metrics"} for r in rounds]
    assert selected_round(unscored) == (unscored[2], "last round")  # not round 0, the best on test
    assert selected_round([]) == (None, "last round")


def test_rounds_are_scored_on_the_selection_split(tiny_model_path, tmp_path):
    beir = _beir(tmp_path)
    dev = "".join(f"q{t}\td{t}2\t1\n" for t in range(len(TOPICS)))
    (beir / "qrels" / "dev.tsv").write_text("query-id\tcorpus-id\tscore\n" + dev)
    with pytest.raises(ValueError, match="selection_split 'test' is the eval_split"):
        SelfTrainingLoop(_args(tmp_path, tiny_model_path, rounds=0, selection_split="test"), beir).run()
    with pytest.raises(ValueError, match="selection_split 'train' is the train_split"):
        SelfTrainingLoop(_args(tmp_path, tiny_model_path, rounds=0, selection_split="train"), beir).run()
    loop = SelfTrainingLoop(_args(tmp_path, tiny_model_path, rounds=0, selection_split="dev", eval_split=None), beir)
    (only,) = loop.run()
    assert "metrics" not in only and 0.0 <= only["selection_metrics"]["ndcg@10"] <= 1.0
    assert selected_round([only]) == (only, "selection split ndcg@10")


def test_cli_prints_only_its_json_on_stdout(tiny_model_path, tmp_path, capsys):
    import yaml
    from test_evaluation import save_tiny_reranker

    recipe = tmp_path / "recipe.yaml"
    settings = {**vars(_args(tmp_path, tiny_model_path, rounds=0)), "data_dir": str(_beir(tmp_path))}
    recipe.write_text(yaml.safe_dump(settings))
    overrides = ["--config", str(recipe)]
    assert main(["self-train", *overrides]) == 0
    printed = json.loads(capsys.readouterr().out)  # the trainer's log lines went to stderr
    assert printed["selected_round"] == 0
    # a reranker folder as the starting model would be read as a bi-encoder without its head
    reranker = save_tiny_reranker(tmp_path / "reranker")
    capsys.readouterr()
    elsewhere = ["--output_dir", str(tmp_path / "other"), "--model", reranker]
    assert main(["self-train", *overrides, *elsewhere]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("error:") and "cross-encoder" in captured.err


def test_a_resume_with_other_labeled_data_is_refused(tiny_model_path, tmp_path, monkeypatch):
    beir = _beir(tmp_path)
    first = _args(tmp_path, tiny_model_path, rounds=0, train_initial_teacher=False, eval_split=None)
    SelfTrainingLoop(first, beir).run()

    def no_training(*args, **kwargs):
        raise AssertionError("trained on other labeled data than the finished rounds")

    monkeypatch.setattr(SelfTrainingLoop, "_train", no_training)
    more = _args(tmp_path, tiny_model_path, rounds=1, train_initial_teacher=False, eval_split=None)
    noisy = {f"q{t}": {f"d{t}1": 1} for t in range(len(TOPICS))}  # the same queries, other positives
    with pytest.raises(ValueError, match="labeled"):
        SelfTrainingLoop(more, beir, labeled_qrels=noisy).run()
    with pytest.raises(ValueError, match="labeled"):  # the same settings over another data folder
        (beir / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq0\td00\t1\nq1\td10\t1\n")
        SelfTrainingLoop(more, beir).run()


def test_selection_queries_that_are_labeled_training_queries_are_left_out(tiny_model_path, tmp_path, caplog):
    beir = _beir(tmp_path)
    args = _args(tmp_path, tiny_model_path, rounds=0, labeled_fraction=1.0, selection_split="dev")
    loop = SelfTrainingLoop(args, beir)
    (beir / "qrels" / "dev.tsv").write_text("query-id\tcorpus-id\tscore\nq0\td02\t1\nt1\td12\t1\nt2\td22\t1\n")
    with caplog.at_level("WARNING", logger="hf_robust_ir.self_training"):
        selection = loop._selection_split({f"q{t}" for t in range(len(TOPICS))})
    assert selection.qrels == {"t1": {"d12": 1}, "t2": {"d22": 1}}  # q0 was trained on
    assert "shares 1 of its 3 queries" in caplog.text
    (beir / "qrels" / "dev.tsv").write_text("query-id\tcorpus-id\tscore\nq0\td02\t1\n")
    with pytest.raises(ValueError, match="holds only labeled training queries"):
        loop._selection_split({"q0"})


def test_a_resume_over_another_corpus_is_refused(tiny_model_path, tmp_path, monkeypatch):
    beir = _beir(tmp_path)
    first = _args(tmp_path, tiny_model_path, rounds=0, train_initial_teacher=False, eval_split=None)
    SelfTrainingLoop(first, beir).run()
    monkeypatch.setattr(SelfTrainingLoop, "_train", lambda *a, **k: pytest.fail("trained over another corpus"))
    corpus = beir / "corpus.jsonl"
    lines = corpus.read_text().splitlines()
    edited = json.loads(lines[-1])
    edited["text"] = "a passage that was rewritten"  # same ids, same labeled queries, one text changed
    corpus.write_text("\n".join([*lines[:-1], json.dumps(edited)]) + "\n")
    more = _args(tmp_path, tiny_model_path, rounds=1, train_initial_teacher=False, eval_split=None)
    with pytest.raises(ValueError, match="another corpus"):
        SelfTrainingLoop(more, beir).run()


def test_synthetic_queries_left_by_a_run_whose_state_was_deleted_are_made_again(tiny_model_path, tmp_path, monkeypatch):
    """The refusal of other settings says to delete the state file; the synthetic queries of the old settings must not
    then be reused for the new ones."""
    beir = _beir(tmp_path)
    pretrained: list[list[tuple[str, str]]] = []

    def no_training(self, model, rows, corpus, training_args):
        if training_args.output_dir.endswith("pretrain"):
            pretrained.append([(row["query_id"], row["query"]) for row in rows])
        return model

    monkeypatch.setattr(SelfTrainingLoop, "_train", no_training)
    spans = {"type": "extractive", "mode": "span", "min_words": 2, "max_words": 3}
    settings = dict(rounds=1, train_initial_teacher=False, eval_split=None)
    SelfTrainingLoop(_args(tmp_path, tiny_model_path, query_generator=spans, **settings), beir).run()
    assert all(len(query.split()) <= 3 for _, query in pretrained[0])
    sentences = {"type": "extractive", "mode": "sentence"}
    with pytest.raises(ValueError, match="other settings; use another output_dir or delete the file"):
        SelfTrainingLoop(_args(tmp_path, tiny_model_path, query_generator=sentences, **settings), beir).run()
    (tmp_path / "out" / self_training.STATE_NAME).unlink()
    SelfTrainingLoop(_args(tmp_path, tiny_model_path, query_generator=sentences, **settings), beir).run()
    # every query is now a whole sentence of its passage ("This passage number k is about T." or "It says more ...")
    corpus = {f"d{t}{k}": (k, topic) for t, topic in enumerate(TOPICS) for k in range(3)}
    assert len(pretrained) == 2 and len(pretrained[1]) == 6
    for query_id, query in pretrained[1]:
        k, topic = corpus[query_id.split(":")[1]]
        assert query in (f"This passage number {k} is about {topic}.", f"It says more words about {topic} here.")
    written = [json.loads(line)["query"] for line in (tmp_path / "out" / "synthetic_queries.jsonl").open()]
    assert written == [query for _, query in pretrained[1]]
