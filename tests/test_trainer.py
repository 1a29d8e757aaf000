"""RetrievalTrainer: training runs, gradient accumulation, resuming, evaluation and best-model selection."""

import datasets
import pytest
import torch

from hf_robust_ir.data.schema import ROW_FEATURES
from hf_robust_ir.modeling import BiEncoder
from hf_robust_ir.trainer import RetrievalTrainer, RetrievalTrainingArguments

CORPUS = {f"d{i}": f"document number {i} about topic {i % 5} " + "filler " * (i % 7) for i in range(40)}


def _rows(n=16):
    rows = []
    for i in range(n):
        doc_ids = [f"d{i}", f"d{(i + 7) % 40}", f"d{(i + 13) % 40}", f"d{(i + 21) % 40}", f"d{(i + 30) % 40}"]
        rows.append(
            {
                "query_id": f"q{i}",
                "query": f"topic {i % 5} question {i}",
                "doc_ids": doc_ids,
                "labels": [1.0, 0.0, 0.0, 0.0, 0.0],
                "teacher_scores": [],
                "label_source": ["qrels"] * 5,
            }
        )
    return datasets.Dataset.from_list(rows, features=ROW_FEATURES)


@pytest.fixture(scope="module")
def model_path(no_dropout_model_path):
    return no_dropout_model_path


def _args(tmp_path, **overrides):
    defaults = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        max_steps=6,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        group_size=3,
        use_cpu=True,
        seed=11,
        disable_tqdm=True,
    )
    defaults.update(overrides)
    return RetrievalTrainingArguments(**defaults)


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same_weights(a, b, atol=1e-6):
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=atol, rtol=0, msg=key)


def test_training_lowers_the_loss_and_changes_weights(tmp_path, model_path):
    model = BiEncoder.from_pretrained(model_path)
    before = _state(model)
    trainer = RetrievalTrainer(model, _args(tmp_path, max_steps=12), train_dataset=_rows(), corpus=CORPUS)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 12
    assert sum(losses[-4:]) < sum(losses[:4])
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


class _ForwardWithKeywords(BiEncoder):
    """A model whose forward takes **kwargs, which transformers reads as 'the model divides by the token count'."""

    def forward(self, query=None, document=None, **kwargs):
        return super().forward(query=query, document=document)


@pytest.mark.parametrize("model_class", [BiEncoder, _ForwardWithKeywords])
def test_gradient_accumulation_matches_the_large_batch(tmp_path, model_path, model_class):
    # Without in-batch negatives each query's loss depends only on its own group, so 2 micro-batches of 2 accumulated
    # give the same update as one batch of 4 -- whatever the model's forward accepts (Trainer divides the loss)
    common = dict(max_steps=2, in_batch_negatives=False, group_size=5)
    big = BiEncoder.from_pretrained(model_path)
    RetrievalTrainer(big, _args(tmp_path / "a", per_device_train_batch_size=4, **common), _rows(), CORPUS).train()
    small = model_class.from_pretrained(model_path)
    args = _args(tmp_path / "b", per_device_train_batch_size=2, gradient_accumulation_steps=2, **common)
    trainer = RetrievalTrainer(small, args, _rows(), CORPUS)
    assert trainer.model_accepts_loss_kwargs is False
    trainer.train()
    _assert_same_weights(_state(big), _state(small), atol=1e-5)
    untouched = BiEncoder.from_pretrained(model_path)
    assert any(not torch.equal(v, _state(big)[k]) for k, v in untouched.state_dict().items())


def test_resume_from_a_mid_run_checkpoint_gives_the_uninterrupted_weights(tmp_path, model_path):
    args = _args(tmp_path / "full", max_steps=10, save_strategy="steps", save_steps=3)
    full = BiEncoder.from_pretrained(model_path)
    RetrievalTrainer(full, args, _rows(), CORPUS).train()  # 4 steps per epoch: the run crosses 2 epoch boundaries
    checkpoint = tmp_path / "full" / "checkpoint-3"
    assert (checkpoint / "model.safetensors").exists() and (checkpoint / "optimizer.pt").exists()

    resumed = BiEncoder.from_pretrained(model_path)
    args = _args(tmp_path / "full", max_steps=10, save_strategy="no")
    RetrievalTrainer(resumed, args, _rows(), CORPUS).train(resume_from_checkpoint=str(checkpoint))
    _assert_same_weights(_state(full), _state(resumed))


def test_saved_checkpoint_is_a_bi_encoder_folder(tmp_path, model_path):
    model = BiEncoder.from_pretrained(model_path, query_prefix="query: ", temperature=0.02)
    trainer = RetrievalTrainer(model, _args(tmp_path, max_steps=2), _rows(), CORPUS)
    trainer.train()
    trainer.save_model(str(tmp_path / "final"))
    loaded = BiEncoder.from_pretrained(tmp_path / "final")
    assert loaded.retrieval_config.query_prefix == "query: " and loaded.retrieval_config.temperature == 0.02
    _assert_same_weights(_state(model), _state(loaded))


class ScriptedEvaluator:
    """Returns scripted nDCG@10 values and remembers the weights it saw at each evaluation."""

    def __init__(self, values):
        self.values, self.seen = list(values), []

    def __call__(self, model):
        self.seen.append(_state(model))
        value = self.values[len(self.seen) - 1]
        return {"ndcg@10": value, "recall@100": value, "mrr@10": value, "map": value}


def test_evaluation_metrics_and_best_model_at_end(tmp_path, model_path):
    evaluator = ScriptedEvaluator([0.2, 0.9, 0.4, 0.5])
    args = _args(
        tmp_path,
        max_steps=6,
        eval_strategy="steps",
        eval_steps=2,
        save_strategy="steps",
        save_steps=2,
        load_best_model_at_end=True,
        metric_for_best_model="ndcg@10",
    )
    model = BiEncoder.from_pretrained(model_path)
    trainer = RetrievalTrainer(model, args, _rows(), CORPUS, evaluator=evaluator)
    trainer.train()
    evals = [h for h in trainer.state.log_history if "eval_ndcg@10" in h]
    assert [h["eval_ndcg@10"] for h in evals] == [0.2, 0.9, 0.4]
    assert trainer.state.best_model_checkpoint.endswith("checkpoint-4")
    _assert_same_weights(_state(model), evaluator.seen[1])  # the weights of the best evaluation were loaded back
    assert set(trainer.evaluate()) == {"eval_ndcg@10", "eval_recall@100", "eval_mrr@10", "eval_map"}


def test_best_model_by_a_loss_the_evaluator_does_not_report_is_refused_before_training(tmp_path, model_path):
    # load_best_model_at_end without metric_for_best_model: transformers picks "loss", which an evaluator never reports
    args = _args(tmp_path, eval_strategy="steps", eval_steps=2, save_strategy="steps", save_steps=2,
                 load_best_model_at_end=True)  # fmt: skip
    assert args.metric_for_best_model == "loss"
    with pytest.raises(ValueError, match="metric_for_best_model is 'loss', but the evaluator reports retrieval"):
        RetrievalTrainer(BiEncoder.from_pretrained(model_path), args, _rows(), CORPUS, evaluator=ScriptedEvaluator([]))
    rows = RetrievalTrainer(BiEncoder.from_pretrained(model_path), args, _rows(), CORPUS, eval_dataset=_rows(8))
    assert rows.evaluator is None  # evaluation on rows reports eval_loss: accepted


def test_missing_corpus_is_a_clear_error(tmp_path, model_path):
    with pytest.raises(ValueError, match="corpus"):
        RetrievalTrainer(BiEncoder.from_pretrained(model_path), _args(tmp_path), _rows())


def test_a_compute_loss_func_is_refused_not_ignored(tmp_path, model_path):
    """transformers' compute_loss_func would never be called by compute_loss, and the trainer would stop dividing the
    loss by the accumulation steps."""
    with pytest.raises(ValueError, match="compute_loss_func is not used: write the loss as a RetrievalLoss"):
        RetrievalTrainer(
            BiEncoder.from_pretrained(model_path), _args(tmp_path), _rows(), CORPUS, compute_loss_func=lambda *a: 0.0
        )


def test_empty_training_rows_are_a_clear_error(tmp_path, model_path):
    with pytest.raises(ValueError, match=r"training rows are empty \(0 queries\)"):
        RetrievalTrainer(BiEncoder.from_pretrained(model_path), _args(tmp_path), _rows().select([]), corpus=CORPUS)


def test_loss_by_name_and_kwargs_from_arguments(tmp_path, model_path):
    trainer = RetrievalTrainer(
        BiEncoder.from_pretrained(model_path), _args(tmp_path, loss="infonce", loss_kwargs="{}"), _rows(), CORPUS
    )
    assert trainer.loss.config() == {"name": "infonce"}


def test_label_weakening_alpha_schedule_and_statistics_reach_the_logs(tmp_path, model_path):
    args = _args(
        tmp_path,
        max_steps=4,
        loss="label_weakening",
        loss_kwargs={"alpha": 0.2},
        loss_schedule="linear",
        loss_schedule_end=0.0,
        confidence_warmup_steps=2,
    )
    trainer = RetrievalTrainer(BiEncoder.from_pretrained(model_path), args, _rows(), CORPUS)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    # linear 0.2 -> 0.0 over 4 steps, the last at 0.0; each log describes the step just run (steps 0, 1, 2, 3)
    assert [round(h["loss_alpha"], 6) for h in logs] == [0.2, 0.133333, 0.066667, 0.0]
    assert [h["confidence_rule"] for h in logs] == [0.0, 0.0, 1.0, 1.0]
    assert all(h["plausible_set_size"] >= 1.0 for h in logs)
    assert "outranked_fraction" in logs[0]


@pytest.mark.skipif(torch.accelerator.is_available(), reason="checks the CPU-only path")
def test_bf16_without_an_accelerator_runs_on_the_cpu(tmp_path):
    args = RetrievalTrainingArguments(output_dir=str(tmp_path), bf16=True, report_to="none")
    assert args.bf16 and args.use_cpu


def test_eval_dataset_of_rows_without_an_evaluator_reports_the_loss_on_them(tmp_path, model_path):
    trainer = RetrievalTrainer(
        BiEncoder.from_pretrained(model_path), _args(tmp_path, per_device_eval_batch_size=8), _rows(), CORPUS,
        eval_dataset=_rows(8),
    )  # fmt: skip
    metrics = trainer.evaluate()
    batch = trainer.data_collator(list(_rows(8)))  # one evaluation batch: the same rows, the same sample
    with torch.no_grad():
        expected = trainer.compute_loss(trainer.model.eval(), batch).item()
    assert metrics["eval_loss"] == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("student_noise", [None, {"kind": "mask", "p": 0.5}])
def test_every_evaluation_on_rows_scores_the_same_clean_batches(tmp_path, model_path, student_noise):
    # learning rate 0: the weights never change, so the evaluation loss of each epoch must be the same number; the
    # rows list 5 candidates of which group_size=3 are sampled, a new sample each training epoch
    args = _args(
        tmp_path, max_steps=-1, num_train_epochs=3, learning_rate=0.0, eval_strategy="epoch",
        per_device_eval_batch_size=8, student_noise=student_noise,
    )  # fmt: skip
    trainer = RetrievalTrainer(BiEncoder.from_pretrained(model_path), args, _rows(), CORPUS, eval_dataset=_rows(8))
    trainer.train()
    assert trainer.data_collator.epoch == 2 and (trainer.data_collator.student_noise is None) == (student_noise is None)
    losses = [h["eval_loss"] for h in trainer.state.log_history if "eval_loss" in h]
    clean = RetrievalTrainer(BiEncoder.from_pretrained(model_path), _args(tmp_path), _rows(), CORPUS).data_collator
    batch = clean(list(_rows(8)))  # epoch 0's sample, no noise
    with torch.no_grad():
        expected = trainer.compute_loss(trainer.model.eval(), batch).item()
    assert losses == pytest.approx([expected] * 3, rel=1e-6)


def test_settings_that_would_silently_change_training_are_refused(tmp_path, model_path):
    model = BiEncoder.from_pretrained(model_path)
    persistent = _args(tmp_path, dataloader_num_workers=1, dataloader_persistent_workers=True)
    with pytest.raises(ValueError, match="dataloader_persistent_workers"):
        RetrievalTrainer(model, persistent, _rows(), CORPUS)
    with pytest.raises(ValueError, match="loss_kwargs is not valid JSON"):
        _args(tmp_path, loss_kwargs="{alpha: 0.2}")
    with pytest.raises(ValueError, match="loss_kwargs must be a JSON object"):
        _args(tmp_path, loss_kwargs="[0.2]")


def test_the_collators_in_batch_setting_reaches_the_cross_device_targets(tmp_path, model_path, monkeypatch):
    import hf_robust_ir.trainer as trainer_module
    from hf_robust_ir.data.collator import RetrievalCollator

    model = BiEncoder.from_pretrained(model_path)
    collator = RetrievalCollator.for_model(model, CORPUS, group_size=3, in_batch_negatives=False)
    trainer = RetrievalTrainer(model, _args(tmp_path), _rows(), CORPUS, data_collator=collator)
    seen = {}

    def recording(*args, **kwargs):
        seen.update(kwargs)
        return torch.zeros(())

    monkeypatch.setattr(trainer_module, "loss_from_embeddings", recording)
    trainer.compute_loss_from_embeddings(torch.zeros(1, 4), torch.zeros(1, 4), {})
    assert seen["in_batch_negatives"] is False  # args.in_batch_negatives is True


def test_teacher_score_check_leaves_streamed_rows_alone(tmp_path, model_path):
    streamed = _rows().to_iterable_dataset()
    trainer = RetrievalTrainer(
        BiEncoder.from_pretrained(model_path), _args(tmp_path, loss="kl_distillation"), streamed, CORPUS
    )
    assert trainer.loss.config()["name"] == "kl_distillation"
    with pytest.raises(ValueError, match="training rows have none"):
        RetrievalTrainer(
            BiEncoder.from_pretrained(model_path), _args(tmp_path, loss="kl_distillation"), _rows(), CORPUS
        )


def test_batches_are_collated_on_each_process_not_dispatched(tmp_path, model_path):
    from transformers.trainer_pt_utils import AcceleratorConfig

    args = _args(tmp_path)
    trainer = RetrievalTrainer(BiEncoder.from_pretrained(model_path), args, _rows(), CORPUS)
    assert trainer.args.accelerator_config.dispatch_batches is False
    args = _args(tmp_path)
    args.accelerator_config = AcceleratorConfig(dispatch_batches=True)
    with pytest.raises(ValueError, match="dispatch_batches cannot split retrieval batches"):
        RetrievalTrainer(BiEncoder.from_pretrained(model_path), args, _rows(), CORPUS)


def test_a_guide_model_for_a_loss_that_reads_no_guide_is_refused(tmp_path, model_path):
    # a guide set for InfoNCE (no guide scores) would be loaded nowhere and silently change nothing
    with pytest.raises(ValueError, match="guide_model is set but loss 'infonce' reads no guide"):
        RetrievalTrainer(
            BiEncoder.from_pretrained(model_path), _args(tmp_path, guide_model=model_path), _rows(), CORPUS
        )
    with pytest.raises(ValueError, match="guide_model is set but loss 'infonce' reads no guide"):
        RetrievalTrainer(
            BiEncoder.from_pretrained(model_path), _args(tmp_path), _rows(), CORPUS,
            guide_model=BiEncoder.from_pretrained(model_path),
        )  # fmt: skip


def test_evaluation_on_rows_during_training_leaves_the_training_unchanged(tmp_path, tiny_model_path):
    # dropout (tiny_model_path has it) draws from the CPU generator, which each evaluation data loader also draws from
    plain = BiEncoder.from_pretrained(tiny_model_path)
    RetrievalTrainer(plain, _args(tmp_path / "plain"), _rows(), CORPUS).train()
    evaluated = BiEncoder.from_pretrained(tiny_model_path)
    args = _args(tmp_path / "evaluated", eval_strategy="steps", eval_steps=2)
    trainer = RetrievalTrainer(evaluated, args, _rows(), CORPUS, eval_dataset=_rows(8))
    trainer.train()
    assert len([h for h in trainer.state.log_history if "eval_loss" in h]) == 3
    _assert_same_weights(_state(plain), _state(evaluated))


def test_push_to_hub_keeps_its_arguments_and_pushes_from_the_main_process_only(tmp_path, model_path, monkeypatch):
    import hf_robust_ir.hub as hub

    calls = []
    monkeypatch.setattr(hub, "push_to_hub", lambda model, repo_id, **kwargs: calls.append((repo_id, kwargs)) or "url")
    args = _args(tmp_path, hub_model_id="org/trained", hub_revision="dev", model_card=False)
    trainer = RetrievalTrainer(BiEncoder.from_pretrained(model_path), args, _rows(), CORPUS)
    trainer.push_to_hub(private=True, base_model="org/base")
    repo_id, kwargs = calls[-1]
    assert repo_id == "org/trained"
    assert kwargs["private"] is True and kwargs["base_model"] == "org/base" and kwargs["revision"] == "dev"
    monkeypatch.setattr(trainer, "is_world_process_zero", lambda: False)
    assert trainer.push_to_hub() is None and len(calls) == 1  # another process of a distributed run


@pytest.mark.parametrize("separate_towers", [False, True])
def test_gradient_checkpointing_trains_to_the_same_weights(tmp_path, model_path, separate_towers):
    """transformers calls the model's activation_checkpointing_enable for gradient_checkpointing=True; recomputing
    activations changes no number (the model has no dropout)."""
    trained = {}
    for checkpointing in (False, True):
        model = BiEncoder.from_pretrained(model_path, separate_towers=separate_towers)
        args = _args(tmp_path / str(checkpointing), max_steps=2, gradient_checkpointing=checkpointing)
        RetrievalTrainer(model, args, _rows(), CORPUS).train()
        towers = [model.query_encoder] + ([model.document_encoder] if separate_towers else [])
        assert all(tower.is_activation_checkpointing == checkpointing for tower in towers)
        trained[checkpointing] = model.state_dict()
    for name, value in trained[False].items():
        torch.testing.assert_close(trained[True][name], value, atol=1e-6, rtol=1e-5, msg=name)


def test_rows_of_one_query_pool_their_labels_in_the_trainers_batches(tmp_path, model_path):
    model = BiEncoder.from_pretrained(model_path)
    rows = _rows(4).to_list()
    second = {**rows[0], "doc_ids": ["d5", "d7"], "labels": [1.0, 0.0], "label_source": ["qrels"] * 2}
    dataset = datasets.Dataset.from_list([*rows, second], features=ROW_FEATURES)
    trainer = RetrievalTrainer(model, _args(tmp_path), train_dataset=dataset, corpus=CORPUS)
    # d5 reaches the batch as q1's negative; q0's other row (not in the batch) labels it relevant for q0
    other = {**rows[1], "doc_ids": ["d1", "d5"], "labels": [1.0, 0.0], "label_source": ["qrels"] * 2}
    batch = trainer.data_collator([rows[0], other])
    labels = {doc_id: column for doc_id, column in zip(batch["doc_ids"], batch["labels"].T.tolist())}
    assert labels["d5"] == [1.0, 0.0]
    assert labels["d0"] == [1.0, 0.0] and labels["d1"] == [0.0, 1.0]


def test_resuming_a_scheduled_guided_label_weakening_run_gives_the_uninterrupted_weights_and_logs(tmp_path, model_path):
    """The α schedule, the confidence warm-up and the frozen guide carry over a resume: the resumed run ends with the
    uninterrupted run's weights and logs the same α, rule state and plausible-set statistics at every later step."""
    from hf_robust_ir.losses import get_loss

    def run(output_dir, resume=None, **overrides):
        args = _args(
            output_dir,
            max_steps=8,
            loss_schedule="linear",
            loss_schedule_start=0.3,
            loss_schedule_end=0.0,
            confidence_warmup_steps=4,
            guide_model=model_path,
            **overrides,
        )
        loss = get_loss("label_weakening", margin=0.0, guide_margin=0.0, replace_margin=0.05, max_added=2)
        model = BiEncoder.from_pretrained(model_path)
        trainer = RetrievalTrainer(model, args, _rows(), CORPUS, loss=loss)
        trainer.train(resume_from_checkpoint=resume)
        logs = {entry["step"]: entry for entry in trainer.state.log_history if "loss" in entry}
        return _state(model), logs

    full, full_logs = run(tmp_path / "full", save_strategy="steps", save_steps=3)
    checkpoint = tmp_path / "full" / "checkpoint-3"
    resumed, resumed_logs = run(tmp_path / "full", resume=str(checkpoint), save_strategy="no")
    _assert_same_weights(full, resumed)
    assert sorted(resumed_logs) == list(range(1, 9))  # steps 1-3 from the checkpoint's trainer state
    keys = ("loss", "loss_alpha", "confidence_rule", "plausible_set_size", "added_per_query", "replaced_fraction")
    for step in resumed_logs:
        for key in keys:
            assert resumed_logs[step][key] == pytest.approx(full_logs[step][key], abs=1e-5), (step, key)
    assert full_logs[8]["loss_alpha"] == pytest.approx(0.0) and full_logs[4]["confidence_rule"] == 0.0
    assert full_logs[5]["confidence_rule"] == 1.0  # the rule adds and replaces labels in the resumed steps
    assert max(full_logs[s]["added_per_query"] for s in range(5, 9)) > 0
    assert max(full_logs[s]["replaced_fraction"] for s in range(5, 9)) > 0
