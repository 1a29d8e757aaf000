"""Model cards: sections, model-index metadata read back by huggingface_hub, training log, citations, validation."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import datasets
import numpy as np
import pytest
from conftest import randomize_lora_b

from hf_robust_ir import hub
from hf_robust_ir.callbacks import ModelCardCallback
from hf_robust_ir.data.schema import ROW_FEATURES
from hf_robust_ir.losses import get_loss
from hf_robust_ir.modeling import BiEncoder

SECTIONS = [
    "## Model details",
    "## Training data",
    "## Label noise handling",
    "### Loss",
    "### Relabeling",
    "### Noise benchmark",
    "## Training hyperparameters",
    "## Evaluation",
    "## Training log",
    "## Usage",
    "## Framework versions",
    "## Citation",
]
LOG_HISTORY = [
    {"loss": 1.25, "learning_rate": 1e-4, "grad_norm": 2.5, "epoch": 0.5, "step": 1},
    {"loss": 0.75, "learning_rate": 5e-5, "grad_norm": 1.5, "epoch": 1.0, "step": 2},
    {"eval_ndcg@10": 0.4321, "eval_runtime": 0.1, "epoch": 1.0, "step": 2},
    {"train_runtime": 3.0, "train_loss": 1.0, "epoch": 1.0, "step": 2},
]
RELABEL = {
    "judge": {"name": "embedding", "config": {"threshold": 0.9}},
    "strategy": "rlhn",
    "strategies": {"rlhn": {"flagged": 7, "queries_flagged": 5, "labels_changed": 6, "rows": 40}},
    "queries": 40,
}
NOISE = [
    {"noise": "swap 40%", "loss": "infonce", "ndcg@10": 0.61},
    {"noise": "swap 40%", "loss": "label_relaxation", "ndcg@10": 0.64},
]


def _info(**overrides) -> hub.ModelCardInfo:
    loss = get_loss("gce", q=0.5)
    fields = dict(
        model_name="tiny-robust",
        repo_id="org/tiny-robust",
        base_model="sentence-transformers/all-MiniLM-L6-v2",
        model_settings={"pooling": "mean", "normalize": True, "query_prefix": "query: ", "document_prefix": ""},
        datasets=[{"id": "BeIR/scifact", "split": "train", "rows": 809, "corpus_size": 5183}],
        loss=loss.config(),
        citations=[loss.citation],
        relabel_summary=RELABEL,
        noise_results=NOISE,
        hyperparameters={"learning_rate": 1e-4, "max_steps": 2},
        eval_results=[
            {
                "dataset": "SciFact",
                "dataset_type": "BeIR/scifact",
                "split": "test",
                "metrics": {"ndcg@10": 0.6512, "recall@100": 0.92},
            }
        ],
        training_log=LOG_HISTORY,
        versions=hub.library_versions(),
        license="apache-2.0",
    )
    fields.update(overrides)
    return hub.ModelCardInfo(**fields)


def test_template_is_package_data_and_the_top_level_copy_matches():
    assert hub.TEMPLATE_PATH.is_file()
    top_level = Path(__file__).resolve().parents[1] / "model_cards" / "retriever_card.md"
    assert top_level.read_text() == hub.TEMPLATE_PATH.read_text()


def test_card_has_every_section_and_metadata_parsed_back_by_huggingface_hub(tmp_path):
    from huggingface_hub import EvalResult, ModelCard

    hub.write_model_card(tmp_path, _info())
    text = (tmp_path / "README.md").read_text()
    positions = [text.index(section) for section in SECTIONS]
    assert positions == sorted(positions)

    card = ModelCard.load(tmp_path / "README.md")
    data = card.data
    assert data.base_model == "sentence-transformers/all-MiniLM-L6-v2"
    assert data.datasets == ["BeIR/scifact"]
    assert data.license == "apache-2.0" and data.library_name == "sentence-transformers"
    assert data.pipeline_tag == "sentence-similarity" and "loss:gce" in data.tags
    assert data.model_name == "tiny-robust"
    results = {r.metric_type: r for r in data.eval_results}
    assert set(results) == {"ndcg_at_10", "recall_at_100"}
    assert results["ndcg_at_10"].metric_value == pytest.approx(0.6512)
    assert results["recall_at_100"].metric_value == pytest.approx(0.92)
    assert all(isinstance(r, EvalResult) for r in data.eval_results)
    ndcg = results["ndcg_at_10"]
    assert (ndcg.task_type, ndcg.dataset_type, ndcg.dataset_name, ndcg.dataset_split) == (
        "information-retrieval",
        "BeIR/scifact",
        "SciFact",
        "test",
    )
    assert ndcg.metric_name == "nDCG@10"


def test_noise_handling_hyperparameters_and_citations(tmp_path):
    text = str(hub.build_model_card(_info()))
    noise = text[text.index("## Label noise handling") : text.index("## Training hyperparameters")]
    assert "`gce`" in noise and "| `q` | 0.5 |" in noise
    assert "`embedding`" in noise and "| `rlhn` | 7 | 5 | 6 | 40 |" in noise and "Labels changed: **6**" in noise
    assert "| swap 40% | label_relaxation | 0.64 |" in noise
    assert "| `learning_rate` | 0.0001 |" in text and "| `max_steps` | 2 |" in text
    citations = text[text.index("## Citation") :]
    assert "Generalized Cross Entropy" in citations  # the loss
    assert "Candidates removed" not in noise  # rlhn removes none
    hn_remove = {"hn_remove": {"flagged": 7, "candidates_removed": 7}}
    removing = {**RELABEL, "strategy": "hn_remove", "strategies": hn_remove}
    noise = str(hub.build_model_card(_info(relabel_summary=removing)))
    assert "Labels changed: **0**. Candidates removed: **7**, kept in the rows' `excluded_doc_ids`" in noise
    assert "arXiv:2505.16967" in citations  # the relabeling method (RLHN)
    assert citations.count("```bibtex") == 2


def test_the_schedule_table_appears_only_when_the_schedule_changes_the_loss():
    constant = {"parameter": None, "schedule": "constant", "start": None, "end": None, "schedule_steps": None,
                "confidence_warmup_steps": 0}  # fmt: skip
    linear = {**constant, "parameter": "alpha", "schedule": "linear", "start": 0.2, "end": 0.0}
    warm_up = {**constant, "parameter": "alpha", "start": 0.1, "end": 0.1, "confidence_warmup_steps": 50}
    for schedule, shown in ((None, False), (constant, False), (linear, True), (warm_up, True)):
        text = str(hub.build_model_card(_info(loss_schedule=schedule)))
        assert ("Schedule of the loss during training" in text) == shown, schedule
    assert "| `schedule` | linear |" in str(hub.build_model_card(_info(loss_schedule=linear)))


def test_a_run_without_extras_says_so():
    text = str(hub.build_model_card(hub.ModelCardInfo(model_name="plain")))
    assert "no relabeling" in text and "no label-noise benchmark results" in text
    assert "no evaluation results" in text and "No training steps were logged" in text
    assert "model-index" not in text


def test_training_log_table_has_one_row_per_step():
    text = str(hub.build_model_card(_info()))
    log = text[text.index("## Training log") : text.index("## Usage")]
    header = next(line for line in log.splitlines() if line.startswith("| Epoch"))
    assert header.split(" | ")[:3] == ["| Epoch", "Step", "Training Loss"] and "eval_ndcg@10" in header
    rows = [line for line in log.splitlines() if re.match(r"^\| [0-9]", line)]
    assert len(rows) == 2
    assert rows[0].startswith("| 0.5 | 1 | 1.25 |") and rows[1].startswith("| 1 | 2 | 0.75 |")
    assert "0.4321" in rows[1] and "train_runtime" not in log


def test_validation_rejects_bad_metadata():
    from huggingface_hub import ModelCard

    card = hub.build_model_card(_info())
    hub.validate_model_card(card)
    broken_index = str(card).replace("  results:", "  resultz:")
    with pytest.raises(ValueError):
        hub.validate_model_card(ModelCard(broken_index))
    with pytest.raises(ValueError, match="invalid repository id"):
        hub.validate_model_card(ModelCard("---\nbase_model: /home/me/model\n---\n# x\n"))
    with pytest.raises(ValueError, match="no metadata"):
        hub.validate_model_card(ModelCard("# no metadata\n"))
    # a local base model stays out of the metadata (the Hub would reject it) but is named in the text
    local = hub.build_model_card(_info(base_model=str(Path(__file__).parent)))
    assert local.data.base_model is None and str(Path(__file__).parent) in str(local)


def test_hyperparameters_leave_out_paths_and_secrets():
    from hf_robust_ir.trainer import RetrievalTrainingArguments

    args = RetrievalTrainingArguments(
        output_dir="/tmp/somewhere",
        learning_rate=3e-4,
        hub_token="hf_secret_value_123",
        hub_model_id="org/x",
        report_to=[],
        loss="gce",
        use_cpu=True,
    )
    found = hub.non_default_hyperparameters(args)
    assert found["learning_rate"] == 3e-4 and found["loss"] == "gce"
    assert not any(k in found for k in ("output_dir", "hub_token", "hub_model_id", "push_to_hub", "report_to"))
    assert "hf_secret_value_123" not in str(found)


def test_usage_snippets_give_the_models_embeddings(tmp_path, tiny_model_path):
    model = BiEncoder.from_pretrained(tiny_model_path, pooling="cls", query_prefix="query: ", document_prefix="doc: ")
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    info = hub.model_card_info_from_model(model, repo_id=str(folder))
    text = hub.usage_snippets(info)
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) == 3
    st_scope, hf_scope = {}, {}
    exec(blocks[0], st_scope)  # sentence-transformers
    exec(blocks[1], hf_scope)  # transformers
    expected = model.encode_queries(["what is label noise?"]) @ model.encode_documents(["Label noise is ..."]).T
    np.testing.assert_allclose(np.asarray(st_scope["scores"]), expected, atol=1e-4)
    np.testing.assert_allclose(hf_scope["scores"].numpy(), expected, atol=1e-4)


def _rows(n=8):
    rows = [
        {
            "query_id": f"q{i}",
            "query": f"topic {i % 3} question {i}",
            "doc_ids": [f"d{i}", f"d{(i + 5) % 16}"],
            "labels": [1.0, 0.0],
            "teacher_scores": [],
            "label_source": ["qrels"] * 2,
        }
        for i in range(n)
    ]
    return datasets.Dataset.from_list(rows, features=ROW_FEATURES)


def _scripted_trainer(model_path, args, ndcg_values):
    """A RetrievalTrainer on `_rows()` whose evaluations report ``ndcg_values`` in turn."""
    from hf_robust_ir.trainer import RetrievalTrainer

    scores = iter(ndcg_values)
    corpus = {f"d{i}": f"document {i} on topic {i % 3}" for i in range(16)}
    return RetrievalTrainer(
        BiEncoder.from_pretrained(model_path),
        args,
        train_dataset=_rows(),
        corpus=corpus,
        evaluator=lambda model: {"ndcg@10": next(scores)},
    )


def test_callback_writes_cards_into_checkpoints_and_the_output_folder(tmp_path, tiny_model_path):
    from huggingface_hub import ModelCard

    from hf_robust_ir.trainer import RetrievalTrainingArguments

    args = RetrievalTrainingArguments(
        output_dir=str(tmp_path / "run"),
        per_device_train_batch_size=4,
        max_steps=2,
        logging_steps=1,
        save_steps=1,
        eval_strategy="steps",
        eval_steps=1,
        report_to=[],
        group_size=2,
        use_cpu=True,
        disable_tqdm=True,
        loss="gce",
    )
    trainer = _scripted_trainer(tiny_model_path, args, [0.25, 0.5])
    callback = ModelCardCallback(
        loss=trainer.loss,
        loss_schedule=trainer.loss_schedule,
        base_model=tiny_model_path,
        train_dataset_info={"path": "rows.jsonl", "split": "train"},
        relabel_summary=RELABEL,
        eval_dataset_info={"dataset": "tiny", "split": "test"},
    )
    trainer.add_callback(callback)
    trainer.train()

    for folder in ("checkpoint-1", "checkpoint-2", "."):
        assert (tmp_path / "run" / folder / "README.md").is_file(), folder
    first = ModelCard.load(tmp_path / "run" / "checkpoint-1" / "README.md")
    final = ModelCard.load(tmp_path / "run" / "README.md")
    assert first.data.eval_results[0].metric_value == pytest.approx(0.25)
    assert final.data.eval_results[0].metric_value == pytest.approx(0.5)
    assert final.data.eval_results[0].metric_type == "ndcg_at_10" and final.data.model_name == "run"
    text = str(final)
    assert "`gce`" in text and "Generalized Cross Entropy" in text and "| rows.jsonl | train | 8 |" in text
    assert "| `max_steps` | 2 |" in text and "Labels changed: **6**" in text
    assert text.count("\n| 1 | 2 |") == 1  # the log row of the last step


def test_final_card_reports_the_best_checkpoint_with_load_best_model_at_end(tmp_path, tiny_model_path):
    """Evaluations at steps 2, 4, 6 score 0.2, 0.9, 0.4: transformers loads checkpoint-4 back, so the card in the
    output folder reports 0.9 (not the last evaluation's 0.4); each checkpoint's card reports its own evaluation."""
    from huggingface_hub import ModelCard

    from hf_robust_ir.trainer import RetrievalTrainingArguments

    args = RetrievalTrainingArguments(
        output_dir=str(tmp_path / "run"),
        per_device_train_batch_size=4,
        max_steps=6,
        logging_steps=1,
        eval_strategy="steps",
        eval_steps=2,
        save_strategy="steps",
        save_steps=2,
        load_best_model_at_end=True,
        metric_for_best_model="ndcg@10",
        report_to=[],
        group_size=2,
        use_cpu=True,
        disable_tqdm=True,
        model_card=True,
    )
    trainer = _scripted_trainer(tiny_model_path, args, [0.2, 0.9, 0.4])
    trainer.train()

    assert trainer.state.best_model_checkpoint == str(tmp_path / "run" / "checkpoint-4")
    reported = {
        folder: ModelCard.load(tmp_path / "run" / folder / "README.md").data.eval_results[0].metric_value
        for folder in ("checkpoint-2", "checkpoint-4", "checkpoint-6", ".")
    }
    assert reported == pytest.approx({"checkpoint-2": 0.2, "checkpoint-4": 0.9, "checkpoint-6": 0.4, ".": 0.9})


def test_callback_writes_nothing_on_other_processes(tmp_path):
    callback = ModelCardCallback(loss=get_loss("infonce"))
    args = SimpleNamespace(output_dir=str(tmp_path), should_save=False)
    state = SimpleNamespace(global_step=1, log_history=[], epoch=1.0)
    callback.on_train_end(args, state, None)
    assert not (tmp_path / "README.md").exists()
    args.should_save = True
    callback.on_train_end(args, state, None)
    assert (tmp_path / "README.md").exists()


def test_callback_rejects_unknown_fields():
    with pytest.raises(TypeError, match="unknown model card field"):
        ModelCardCallback(licence="mit")


def test_hyperparameters_leave_out_local_folders(tmp_path, tiny_model_path):
    """A guide model given as a local folder is a path, not a hyperparameter a reader can reuse (and a published card
    must not name a local folder)."""
    from hf_robust_ir.trainer import RetrievalTrainingArguments

    args = RetrievalTrainingArguments(
        output_dir=str(tmp_path), guide_model=tiny_model_path, loss="guide_masked", report_to=[], use_cpu=True
    )
    found = hub.non_default_hyperparameters(args)
    assert found["loss"] == "guide_masked" and tiny_model_path not in str(found)


def test_usage_snippets_of_separate_lora_towers_give_the_models_embeddings(tmp_path, tiny_model_path, monkeypatch):
    """With separate towers each tower folder holds an adapter: transformers' AutoModel does not look for an adapter
    in a subfolder, so the snippet loads each one with peft on top of the base model."""
    import huggingface_hub
    import torch
    from peft import LoraConfig

    model = BiEncoder.from_pretrained(tiny_model_path, separate_towers=True, query_prefix="query: ")
    model.add_lora(LoraConfig(r=2, lora_alpha=4, target_modules=["query", "value"]))
    torch.manual_seed(0)
    randomize_lora_b(model)  # trained adapters, different in each tower
    folder = tmp_path / "towers"
    model.save_pretrained(folder)
    text = hub.usage_snippets(hub.model_card_info_from_model(model, repo_id=str(folder)))
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, **kwargs: repo_id)  # the Hub, offline
    expected = model.encode_queries(["what is label noise?"]) @ model.encode_documents(["Label noise is ..."]).T
    for block in blocks[:2]:  # sentence-transformers, transformers
        scope = {}
        exec(block, scope)
        np.testing.assert_allclose(np.asarray(scope["scores"]), expected, atol=1e-4)


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_last_token_usage_snippet_embeds_a_padded_batch_as_the_model_does(tmp_path, tiny_model_path, padding_side):
    """Decoder embedders pad on the left: the snippet's ``embed`` must pool each text's last token whichever side
    its tokenizer pads, for a batch of texts of different lengths (one text alone has no padding)."""
    model = BiEncoder.from_pretrained(tiny_model_path, pooling="lasttoken", normalize=False, query_prefix="q: ")
    model.tokenizer.padding_side = padding_side
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    text = hub.usage_snippets(hub.model_card_info_from_model(model, repo_id=str(folder)))
    scope = {}
    exec(re.findall(r"```python\n(.*?)```", text, re.S)[1], scope)  # transformers
    assert scope["tokenizer"].padding_side == padding_side
    texts = ["label noise", "a much longer query about wrong labels in dense retrieval training data"]
    embedded = scope["embed"](texts, "q: ", 256).numpy()
    np.testing.assert_allclose(embedded, model.encode_queries(texts), atol=1e-5)


def test_the_card_records_the_loss_as_configured_not_as_the_schedule_left_it():
    """The schedule moves alpha and turns the confidence rule off during the warm-up; a card written meanwhile records
    the loss as it was built (alpha 0.3, rule on), next to the schedule, and leaves the training loss as it is."""
    from types import SimpleNamespace

    from hf_robust_ir.callbacks import LossScheduleCallback

    loss = get_loss("label_weakening", alpha=0.3, warmup_steps=3)
    schedule = LossScheduleCallback(loss, "linear", alpha_end=0.0)
    schedule.apply(1, 11)  # alpha = 0.3 - 0.3 * 1 / 10 = 0.27, rule off (step 1 < 3)
    callback = ModelCardCallback(loss=loss, loss_schedule=schedule)
    args, state = SimpleNamespace(output_dir="/tmp/run"), SimpleNamespace(log_history=[])
    recorded = callback.card_info(args, state).loss
    assert recorded["alpha"] == pytest.approx(0.3) and recorded["confidence_enabled"] is True
    assert loss.alpha == pytest.approx(0.27) and loss.confidence_enabled is False  # training goes on as scheduled
    # a rule the user switched off is recorded off; a wrapper's inner loss is recorded as configured too
    off = get_loss("label_weakening", warmup_steps=3, confidence_enabled=False)
    off_schedule = LossScheduleCallback(off)
    off_schedule.apply(5, 11)
    assert (
        ModelCardCallback(loss=off, loss_schedule=off_schedule).card_info(args, state).loss["confidence_enabled"]
        is False
    )
    wrapped = get_loss("guide_masked", inner="label_weakening", inner_kwargs={"alpha": 0.2, "warmup_steps": 2})
    wrapped_schedule = LossScheduleCallback(wrapped, "cosine", alpha_end=0.0)
    wrapped_schedule.apply(10, 11)  # the end: alpha 0, rule on
    inner = ModelCardCallback(loss=wrapped, loss_schedule=wrapped_schedule).card_info(args, state).loss["inner"]
    assert inner["alpha"] == pytest.approx(0.2) and wrapped.alpha == pytest.approx(0.0)
