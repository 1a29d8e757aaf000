"""Recipe mistakes in `hf-robust-ir relabel` and `train`: exit code 2 and one line, ``error: <file>, line N, field
'<name>': <problem>`` (the command line in place of the file for overrides), never a traceback."""

import dataclasses
import json

import pytest

from hf_robust_ir.cli import main
from hf_robust_ir.commands.common import load_recipe
from hf_robust_ir.data import DataFormatError


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return err.strip().splitlines()[-1]


def _write(tmp_path, text, name="recipe.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.fixture
def relabel_head(tmp_path):
    """The first three recipe lines (output_dir, rows, data_dir) over a 4-document BEIR folder; ``judge:`` is line 4."""
    beir = tmp_path / "beir"
    (beir / "qrels").mkdir(parents=True)
    docs = {"p0": "paris is the capital of france", "n0": "bananas are yellow", "p1": "water boils", "n1": "moon"}
    (beir / "corpus.jsonl").write_text("".join(json.dumps({"_id": d, "text": t}) + "\n" for d, t in docs.items()))
    (beir / "queries.jsonl").write_text(json.dumps({"_id": "q0", "text": "capital of france"}) + "\n")
    (beir / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq0\tp0\t1\n")
    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        json.dumps({"query_id": "q0", "query": "capital", "doc_ids": ["p0", "n0"], "labels": [1, 0]}) + "\n"
    )
    return f"output_dir: {tmp_path / 'out'}\nrows: {rows}\ndata_dir: {beir}\n"


@pytest.mark.parametrize(
    ("judge", "key"),
    [
        ("type: cascade\n  cheap: {type: embedding, model: MODEL}\n  expensive: {type: embedding, model: MODEL}\n"
         "  escalte: flagged\n", "escalte"),
        ("type: embedding\n  model: MODEL\n  margn: 0.1\n", "margn"),
        ("type: openai\n  base_url: http://localhost:1\n  model: m\n  retries: 3\n", "retries"),
        ("type: cascade\n  cheap: {type: embedding, model: MODEL, margn: 0.1}\n"
         "  expensive: {type: embedding, model: MODEL}\n", "cheap.margn"),
    ],
)  # fmt: skip
def test_a_misspelled_judge_setting_names_the_recipe_the_judge_line_and_the_key(
    tmp_path, capsys, relabel_head, tiny_model_path, judge, key
):
    recipe = _write(tmp_path, relabel_head + "judge:\n  " + judge.replace("MODEL", tiny_model_path))
    assert main(["relabel", "--config", str(recipe)]) == 2
    assert _error_line(capsys).startswith(f"error: {recipe}, line 4, field 'judge': unknown setting '{key}': ")


def test_a_judge_value_the_judge_refuses_names_the_judge_line(tmp_path, capsys, relabel_head, tiny_model_path):
    judge = f"judge:\n  type: embedding\n  model: {tiny_model_path}\n  margin_strategy: sideways\n"
    recipe = _write(tmp_path, relabel_head + judge)
    assert main(["relabel", "--config", str(recipe)]) == 2
    assert _error_line(capsys) == (
        f"error: {recipe}, line 4, field 'judge': margin_strategy must be 'absolute' or 'relative', got 'sideways'"
    )


def test_relabel_override_and_recipe_that_are_not_yaml(tmp_path, capsys):
    recipe = _write(tmp_path, "output_dir: out\n")
    assert main(["relabel", "--config", str(recipe), "--batch_size", "[1"]) == 2
    assert _error_line(capsys) == (
        "error: command line, field 'batch_size': invalid YAML value '[1': expected ',' or ']', but got '<stream end>'"
    )
    recipe = _write(tmp_path, "output_dir: out\nstrategies: [rlhn\n")  # the parser notices only at the end (line 3)
    assert main(["relabel", "--config", str(recipe)]) == 2
    assert _error_line(capsys) == (
        f"error: {recipe}, line 2: invalid YAML: expected ',' or ']', but got '<stream end>' (while parsing a flow"
        " sequence)"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("learning_rate: [oops\n", "line 2: invalid YAML: expected ',' or ']', but got '<stream end>' (while parsing"
         " a flow sequence)"),
        ("max_steps: 2\n  learning_rate: 1\n", "line 3: invalid YAML: mapping values are not allowed here"),
        ("learning_rate: abc\n", "line 2, field 'learning_rate': invalid float value: 'abc'"),
        ("lerning_rate: 0.1\n", "line 2, field 'lerning_rate': unknown field (did you mean 'learning_rate'?)"),
        ("epochs: 3\n", "line 2, field 'epochs': unknown field (did you mean 'num_train_epochs'?)"),
        ("train_group_size: 8\n", "line 2, field 'train_group_size': unknown field (did you mean 'group_size'?)"),
        ("learning_rate: [0.1, 0.2]\n", "line 2, field 'learning_rate': expected one value, got a list: [0.1, 0.2]"),
        ("eval_strategy: sometimes\n", "line 2, field 'eval_strategy': invalid choice: 'sometimes'"),
    ],
)  # fmt: skip
def test_train_recipe_errors_name_the_file_line_and_field(tmp_path, capsys, text, expected):
    recipe = _write(tmp_path, f"output_dir: {tmp_path / 'run'}\n" + text)
    assert main(["train", "--config", str(recipe)]) == 2
    assert _error_line(capsys).startswith(f"error: {recipe}, {expected}")


def test_train_override_errors_name_the_command_line(tmp_path, capsys):
    recipe = _write(tmp_path, f"output_dir: {tmp_path / 'run'}\nlearning_rate: abc\n")
    # an override replaces the recipe's value: only the override is read
    assert main(["train", "--config", str(recipe), "--learning_rate", "1e-4", "--max_steps", "x"]) == 2
    assert _error_line(capsys) == "error: command line, field 'max_steps': invalid int value: 'x'"
    recipe.write_text(f"output_dir: {tmp_path / 'run'}\n")
    assert main(["train", "--config", str(recipe), "--learning", "1e-4"]) == 2  # no abbreviations
    assert _error_line(capsys) == "error: command line, field 'learning': unknown field (did you mean 'learning_rate'?)"


def test_train_overrides_written_key_equals_value_replace_the_recipe_value(tmp_path, capsys):
    from hf_robust_ir.commands.train import parse_recipe

    recipe = _write(tmp_path, f"output_dir: {tmp_path / 'run'}\neval_split: null\nmax_steps: 5\n")
    _, data_args, training_args = parse_recipe(str(recipe), ["--eval_split=dev", "--max-steps=7"])
    assert (data_args.eval_split, training_args.max_steps) == ("dev", 7)  # not the recipe's null
    assert main(["train", "--config", str(recipe), "--max_steps=x"]) == 2
    assert _error_line(capsys) == "error: command line, field 'max_steps': invalid int value: 'x'"
    assert main(["train", "--config", str(recipe), "--lerning_rate=0.1"]) == 2
    assert _error_line(capsys) == (
        "error: command line, field 'lerning_rate': unknown field (did you mean 'learning_rate'?)"
    )


@dataclasses.dataclass
class _Recipe:
    learning_rate: float = 2e-5
    margin: float | None = None
    name: str = ""


def test_recipe_float_written_with_an_exponent_reads_as_a_number(tmp_path):
    """The recipes of relabel, synthesize and self-train (read by ``load_recipe``) take ``1e-5`` as train's do."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("learning_rate: 1e-5\nmargin: -2.5E+1\nname: 1e5\n")  # YAML 1.1 reads these as strings
    config, where = load_recipe(_Recipe, str(recipe), ["--learning_rate", "3e-4"])
    assert config == {"learning_rate": 3e-4, "margin": -25.0, "name": "1e5"}
    assert [where(name) for name in config] == [("command line", None), (str(recipe), 2), (str(recipe), 3)]
    recipe.write_text("name: x\nlearning_rate: fast\n")
    with pytest.raises(DataFormatError, match="line 2, field 'learning_rate': expected float, got str"):
        load_recipe(_Recipe, str(recipe), [])


def test_train_override_null_sets_a_field_to_none_as_the_recipe_null_does(tmp_path, capsys):
    """``--eval_split null`` was read as the split name "null" and failed after the model loaded."""
    from hf_robust_ir.commands.train import parse_recipe

    recipe = _write(tmp_path, f"output_dir: {tmp_path / 'run'}\neval_split: dev\nmax_steps: 5\n")
    for overrides in (["--eval_split", "null"], ["--eval-split=~"], ["--eval_split", "NULL"]):
        _, data_args, training_args = parse_recipe(str(recipe), [*overrides, "--max_steps", "7"])
        assert (data_args.eval_split, training_args.max_steps) == (None, 7)
    assert main(["train", "--config", str(recipe), "--max_steps", "null"]) == 2
    assert _error_line(capsys) == "error: command line, field 'max_steps': null is not a value of this field"
    assert main(["train", "--config", str(recipe), "--eval_splt", "null"]) == 2
    assert _error_line(capsys) == "error: command line, field 'eval_splt': unknown field (did you mean 'eval_split'?)"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("loss: label_weakening\nloss_schedule: cosin\n", "line 3, field 'loss_schedule': loss 'label_weakening': "
         "alpha_schedule must be one of ('constant', 'linear', 'cosine'), got 'cosin'"),
        ("loss: label_weakening\nloss_schedule: linear\nloss_schedule_end: 1.5\n", "line 4, field "
         "'loss_schedule_end': loss 'label_weakening': loss schedule: end alpha=1.5 is refused by LabelWeakeningLoss: "
         "alpha must be in [0, 1), got 1.5"),
        ("loss: infonce\nloss_schedule: linear\n", "line 3, field 'loss_schedule': loss 'infonce': InfoNCELoss has "
         "no single attribute 'alpha' to schedule (it has none)"),
        ("loss: infonce\nconfidence_warmup_steps: 3\n", "line 3, field 'confidence_warmup_steps': loss 'infonce': "
         "InfoNCELoss has no confidence rule to warm up (warmup_steps=3)"),
        ("loss: infonce\nguide_model: MODEL\n", "line 3, field 'guide_model': loss 'infonce' reads no guide"),
        ("loss: guide_masked\nguide_model: MISSING\n", "line 3, field 'guide_model': 'MISSING' is not a model folder "
         "(a local copy is needed; Hub names are not downloaded)"),
    ],
)  # fmt: skip
def test_train_loss_schedule_and_guide_errors_stop_before_the_model_loads(tmp_path, capsys, text, expected):
    """The trainer refused these only after the model had loaded, the rows were mined and the first evaluation ran."""
    missing = str(tmp_path / "no_such_model")
    text = text.replace("MISSING", missing).replace("MODEL", str(tmp_path))
    # the model folder does not exist either: an error about the loss proves the check comes before the model loads
    recipe = _write(tmp_path, f"output_dir: {tmp_path / 'run'}\n{text}model_name_or_path: {missing}\n")
    assert main(["train", "--config", str(recipe)]) == 2
    assert _error_line(capsys) == f"error: {recipe}, {expected.replace('MISSING', missing)}"


def test_train_refuses_a_loss_as_the_best_model_metric_of_an_evaluated_run_before_loading(tmp_path, capsys):
    """transformers picks 'loss' when load_best_model_at_end has no metric; the evaluator reports none. The trainer
    refused it after the mining and the first evaluation."""
    missing = tmp_path / "no_such_model"  # an error about the metric proves the check comes before the model loads
    head = f"output_dir: {tmp_path / 'run'}\nmodel_name_or_path: {missing}\n"
    recipe = _write(tmp_path, head + "eval_strategy: steps\nsave_strategy: steps\nload_best_model_at_end: true\n")
    assert main(["train", "--config", str(recipe)]) == 2
    assert _error_line(capsys).startswith(
        f"error: {recipe}, line 5, field 'load_best_model_at_end': metric_for_best_model is 'loss', but the evaluator"
    )
    assert main(["train", "--config", str(recipe), "--metric_for_best_model", "eval_loss"]) == 2
    assert _error_line(capsys).startswith("error: command line, field 'metric_for_best_model': metric_for_best_model")
    from hf_robust_ir.commands.train import parse_recipe

    _, _, training_args = parse_recipe(str(recipe), ["--eval_split", "null"])  # no evaluator: the loss is reported
    assert training_args.metric_for_best_model == "loss"


def test_overrides_of_relabel_self_train_and_synthesize_are_named_as_the_command_line(tmp_path, capsys):
    """An override's error named the recipe file, where the value is not."""
    recipe = _write(tmp_path, f"output_dir: {tmp_path / 'out'}\nbatch_size: 4\n")
    assert main(["relabel", "--config", str(recipe), "--batch_size", "0"]) == 2
    assert _error_line(capsys) == "error: command line, field 'batch_size': must be >= 1, got 0"
    assert main(["relabel", "--config", str(recipe), "--strategies", "[]"]) == 2
    assert _error_line(capsys) == "error: command line, field 'strategies': no relabeling strategy given"
    assert main(["relabel", "--config", str(recipe), "--batch_size", "2", "--strategies", "[]"]) == 2
    assert _error_line(capsys) == "error: command line, field 'strategies': no relabeling strategy given"
    recipe.write_text(f"output_dir: {tmp_path / 'out'}\nstrategies: []\n")  # the recipe's own line, as before
    assert main(["relabel", "--config", str(recipe)]) == 2
    assert _error_line(capsys) == f"error: {recipe}, line 2, field 'strategies': no relabeling strategy given"
    recipe.write_text(f"output_dir: {tmp_path / 'out'}\n")
    assert main(["self-train", "--config", str(recipe), "--labeled_fraction", "2"]) == 2
    assert _error_line(capsys) == "error: command line, field 'labeled_fraction': must be in (0, 1]"
    assert main(["synthesize", "--config", str(recipe), "--backend", "{type: nope}"]) == 2
    assert _error_line(capsys) == "error: command line, field 'backend': type must be 'hf' or 'openai'"


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("train", ["merge_lora (bool, default False): save the trained adapter merged", "loss_schedule (str, default "
                   "'constant')", "eval_split (str | None, default 'test')", "every field of transformers.Training"]),
        ("relabel", ["output_dir (str, required)", "strategies (list, default ['rlhn', 'hn_remove', 'remove'])"]),
        ("self-train", ["labeled_fraction (float, default"]),
        ("synthesize", ["output_dir (str, required)"]),
    ],
)  # fmt: skip
def test_recipe_commands_list_their_fields_in_help(capsys, monkeypatch, command, expected):
    """--help of a recipe command showed --config alone: the recipe's fields were found only in the source."""
    monkeypatch.setenv("COLUMNS", "1000")  # one line per field
    with pytest.raises(SystemExit) as stopped:
        main([command, "--help"])
    assert stopped.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    for text in expected:
        assert any(text in line for line in lines), text
    if command == "train":  # transformers' own fields are named, not listed
        assert not any(line.lstrip().startswith("learning_rate (") for line in lines)


def test_every_recipe_field_listed_in_help_says_what_it_does():
    from transformers import TrainingArguments

    from hf_robust_ir.commands.relabel import RelabelArguments
    from hf_robust_ir.commands.synthesize import SynthesizeArguments
    from hf_robust_ir.commands.train import DataArguments, ModelArguments
    from hf_robust_ir.self_training import SelfTrainingArguments
    from hf_robust_ir.trainer import RetrievalTrainingArguments

    inherited = {f.name for f in dataclasses.fields(TrainingArguments)}  # transformers' own: named, not listed
    groups = [ModelArguments, DataArguments, RelabelArguments, SynthesizeArguments, SelfTrainingArguments]
    listed = [(cls.__name__, f) for cls in groups for f in dataclasses.fields(cls)]
    listed += [("RetrievalTrainingArguments", f) for f in dataclasses.fields(RetrievalTrainingArguments)]
    listed = [(owner, f) for owner, f in listed if owner != "RetrievalTrainingArguments" or f.name not in inherited]
    assert [f"{owner}.{f.name}" for owner, f in listed if not f.metadata.get("help")] == []
