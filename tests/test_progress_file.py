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


def test_a_whole_last_record_without_its_newline_is_kept(tmp_path):
    """The readers (scoring, synthesize) count a last line that parses as done: cutting it would lose that record."""
    path = tmp_path / "progress.jsonl"
    path.write_text('{"a": 1}\n{"b": 2}')
    with open_for_append(path) as handle:
        handle.write('{"c": 3}\n')
    assert path.read_text() == '{"a": 1}\n{"b": 2}\n{"c": 3}\n'


def test_an_interruption_at_any_byte_loses_and_repeats_no_record(tmp_path):
    import json

    records = ['{"index": 0, "scores": [0.5]}', '{"index": 1, "scores": [0.25, 1.0]}']
    full = "".join(r + "\n" for r in records)
    path = tmp_path / "progress.jsonl"
    for cut in range(len(full) + 1):
        path.write_text(full[:cut])
        read = []  # what a reader counts as done: every line that parses
        for line in full[:cut].splitlines():
            try:
                read.append(json.loads(line))
            except json.JSONDecodeError:
                pass
        with open_for_append(path) as handle:
            handle.write('{"index": 2}\n')
        kept = [json.loads(line) for line in path.read_text().splitlines()]
        assert kept == read + [{"index": 2}], cut
