"""open_for_append: a last line cut by an interruption is dropped before anything is appended."""

from hf_robust_ir.data.progress_file import open_for_append


def test_a_cut_last_line_is_dropped_and_complete_lines_are_kept(tmp_path):
    path = tmp_path / "progress.jsonl"
    path.write_text('{"a": 1}\n{"b": 2}\n{"c": ')
    with open_for_append(path) as handle:
        handle.write('{"d": 4}\n')
    assert path.read_text() == '{"a": 1}\n{"b": 2}\n{"d": 4}\n'


def test_complete_files_new_files_and_a_single_cut_line(tmp_path):
    complete = tmp_path / "complete.jsonl"
    complete.write_text('{"a": 1}\n')
    with open_for_append(complete) as handle:
        handle.write('{"b": 2}\n')
    assert complete.read_text() == '{"a": 1}\n{"b": 2}\n'
    with open_for_append(tmp_path / "new.jsonl") as handle:
        assert handle.tell() == 0
        handle.write("x\n")
    assert (tmp_path / "new.jsonl").read_text() == "x\n"
    only_cut = tmp_path / "cut.jsonl"
    only_cut.write_text('{"a": ')
    with open_for_append(only_cut) as handle:
        assert handle.tell() == 0
    assert only_cut.read_text() == ""
