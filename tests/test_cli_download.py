"""`hf-robust-ir download`: errors from huggingface_hub become one `error: ...` line and exit status 2."""

from __future__ import annotations

import argparse

from hf_robust_ir.commands import download as command


def test_offline_download_of_an_uncached_repository_is_one_error_line(tmp_path, capsys, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # nothing cached, no network: LocalEntryNotFoundError
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    args = parser.parse_args(
        ["org/does-not-exist", "--local_dir", str(tmp_path / "x"), "--cache_dir", str(tmp_path / "cache")]
    )
    assert command.run(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: could not download org/does-not-exist: ") and err.count("\n") == 1
    assert "Traceback" not in err
