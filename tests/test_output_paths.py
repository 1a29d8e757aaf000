"""Every command that writes a folder refuses, before any work, an output path it could not make: a file, or a path
under a file. Mining, scoring or training first and failing at the save lost the whole run (a raw FileExistsError or
NotADirectoryError from ``os.makedirs``)."""

import pytest
from test_evaluation import write_beir_folder

from hf_robust_ir.cli import main


@pytest.fixture
def paths(tmp_path):
    """A BEIR folder (it also stands in for every model: the check must come before any model loads), an adapter
    folder of nothing but its config, a plain file, and a path under that file."""
    write_beir_folder(tmp_path / "beir", split="train")
    (tmp_path / "plain").write_text("not a folder")
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")  # never read: the check comes first
    return {
        "beir": str(tmp_path / "beir"),
        "adapter": str(tmp_path / "adapter"),
        "file": str(tmp_path / "plain"),
        "under": str(tmp_path / "plain" / "x"),
    }


def _command(name, paths, output):
    beir = paths["beir"]
    return {
        "mine": ["mine", "--model", beir, "--data", beir, "--output", output, "--quiet"],
        "noise": ["noise", "--data", beir, "--kind", "semantic_swap", "--model", beir, "--rate", "0.5"]
        + ["--output", output, "--quiet"],
        "score": ["score", "--data", beir, "--teacher", beir, "--output", output, "--quiet"],
        "merge-lora": ["merge-lora", paths["adapter"], "--out", output],
    }[name]


def _last_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return err.strip().splitlines()[-1]


@pytest.mark.parametrize("command", ["mine", "noise", "score", "merge-lora"])
def test_flag_commands_refuse_a_file_as_their_output_folder(paths, capsys, command):
    flag = "--out" if command == "merge-lora" else "--output"
    assert main(_command(command, paths, paths["file"])) == 2
    assert _last_error_line(capsys).endswith(f"{flag} {paths['file']!r} is a file; give a folder")
    assert main(_command(command, paths, paths["under"])) == 2
    assert _last_error_line(capsys).endswith(
        f"{flag} {paths['under']!r} cannot be made: {paths['file']!r} is a file, not a folder"
    )


@pytest.mark.parametrize(
    ("command", "recipe"),
    [
        ("train", "model_name_or_path: BEIR\ndata_dir: BEIR\n"),
        ("relabel", "rows: BEIR\ndata_dir: BEIR\njudge: {type: embedding, model: BEIR}\n"),
        ("self-train", "data_dir: BEIR\n"),
        ("synthesize", "data_dir: BEIR\nbackend: {type: hf, model: BEIR}\n"),
    ],
)
def test_recipe_commands_name_the_output_dir_line_when_it_is_a_file(paths, tmp_path, capsys, command, recipe):
    path = tmp_path / "recipe.yaml"
    path.write_text(recipe.replace("BEIR", paths["beir"]) + f"output_dir: {paths['file']}\n")
    line = recipe.count("\n") + 1
    assert main([command, "--config", str(path)]) == 2
    assert _last_error_line(capsys) == (
        f"error: {path}, line {line}, field 'output_dir': {paths['file']!r} is a file; give a folder"
    )


def test_train_names_an_output_dir_override_under_a_file(paths, tmp_path, capsys):
    path = tmp_path / "recipe.yaml"
    path.write_text(f"model_name_or_path: {paths['beir']}\ndata_dir: {paths['beir']}\noutput_dir: {tmp_path}/run\n")
    assert main(["train", "--config", str(path), "--output_dir", paths["under"]]) == 2
    assert _last_error_line(capsys) == (
        f"error: command line, field 'output_dir': {paths['under']!r} cannot be made: {paths['file']!r} is a file,"
        " not a folder"
    )


def test_relabel_refuses_a_folder_as_its_judgment_cache_file(paths, tmp_path, capsys):
    path = tmp_path / "recipe.yaml"
    path.write_text(f"output_dir: {tmp_path}/out\ncache_path: {tmp_path}\n")
    assert main(["relabel", "--config", str(path)]) == 2
    assert _last_error_line(capsys) == (
        f"error: {path}, line 2, field 'cache_path': {str(tmp_path)!r} is a folder; give a file name"
    )


BENCHMARKS = [
    "noise_robustness",
    "excluded_documents",
    "false_negatives",
    "hybrid_guide_retrieval",
    "mining_copies_of_positives",
    "mteb_reproduction",
    "self_training",
    "throughput",
    "weakening_rule_analysis",
]


@pytest.mark.parametrize("name", BENCHMARKS)
def test_benchmarks_refuse_a_folder_as_their_results_file_before_any_work(tmp_path, capsys, name):
    """Most benchmarks write --out when their runs end: a folder there lost the whole run to IsADirectoryError."""
    from conftest import benchmark_module

    with benchmark_module(name) as module:
        entry = module.main if name == "weakening_rule_analysis" else module.parse_args
        with pytest.raises(SystemExit) as stopped:
            entry(["--out", str(tmp_path)])
    assert stopped.value.code == 2
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert last_line.endswith(f"error: --out {str(tmp_path)!r} is a folder; give a file name")
