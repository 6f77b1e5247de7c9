"""data_io: path:line errors, rejects files, tolerant decoding, atomic writes.

    python -m pytest tests/test_data_io.py -q
"""

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from script.data_io import (
    DataError,
    atomic_open,
    atomic_write_json,
    iter_jsonl,
    read_json,
    read_jsonl,
    require_fields,
)


def write_bytes(path, data: bytes):
    path.write_bytes(data)
    return path


def test_bad_lines_are_reported_with_path_and_line_and_good_lines_kept(tmp_path):
    path = write_bytes(tmp_path / "mixed.jsonl", b"\n".join([
        b'{"question": "q1", "answer": "A"}',
        b'{"question": "q2", "answer": ',          # truncated JSON
        b'',                                         # blank line: skipped, not an error
        b'[1, 2, 3]',                                # not an object
        b'{"question": "q3"}',                      # missing field
        b'{"question": "\xff\xfe", "answer": "B"}',  # invalid UTF-8
        b'{"question": "q4", "answer": "C"}',
    ]) + b"\n")
    rejects = tmp_path / "rejects.jsonl"
    report = read_jsonl(path, require_fields("question", "answer"), rejects_path=rejects)

    assert [r["question"] for r in report.records] == ["q1", "q4"]
    assert report.counts == {"kept": 2, "rejected": 4, "blank": 0}
    messages = [str(r) for r in report.rejects]
    assert messages[0].startswith(f"{path}:2: invalid JSON")
    assert messages[1] == f"{path}:4: expected a JSON object, found list"
    assert messages[2].startswith(f"{path}:5: missing field 'answer'")
    assert messages[3].startswith(f"{path}:6: invalid UTF-8")
    saved = [json.loads(line) for line in rejects.read_text(encoding="utf-8").splitlines()]
    assert [s["line"] for s in saved] == [2, 4, 5, 6]
    assert all(s["source"] == str(path) and s["reason"] for s in saved)


def test_first_bad_line_raises_without_reject_handler(tmp_path):
    path = write_bytes(tmp_path / "bad.jsonl", b'{"a": 1}\nnot json\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2: invalid JSON"):
        list(iter_jsonl(path))


def test_bom_and_crlf_are_accepted(tmp_path):
    path = write_bytes(tmp_path / "win.jsonl", b'\xef\xbb\xbf{"a": "\xea\xb0\x80"}\r\n{"a": "b"}\r\n')
    assert [r for _, r in iter_jsonl(path)] == [{"a": "가"}, {"a": "b"}]


def test_type_check_in_validator(tmp_path):
    path = write_bytes(tmp_path / "t.jsonl", b'{"answer": 3}\n{"answer": "C"}\n')
    report = read_jsonl(path, require_fields("answer", types={"answer": str}))
    assert len(report.records) == 1
    assert str(report.rejects[0]) == f"{path}:1: field 'answer' should be str, found int"


def test_too_many_rejects_fail_the_read(tmp_path):
    path = write_bytes(tmp_path / "mostly_bad.jsonl", b'{"a": 1}\nx\ny\nz\n')
    with pytest.raises(DataError, match="3 of 4 lines rejected"):
        read_jsonl(path, max_reject_fraction=0.5)


def test_read_json_reports_line(tmp_path):
    path = tmp_path / "cfg.json"
    path.write_text('{\n  "a": 1,\n  "b": \n}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"cfg\.json:4: invalid JSON"):
        read_json(path)


def test_atomic_write_keeps_old_file_when_writer_fails(tmp_path):
    target = tmp_path / "report.json"
    atomic_write_json(target, {"version": 1})
    with pytest.raises(RuntimeError):
        with atomic_open(target) as handle:
            handle.write('{"version": 2, "half')
            raise RuntimeError("disk full")
    assert json.loads(target.read_text(encoding="utf-8")) == {"version": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]  # no temp file left behind


def test_kill_mid_write_leaves_old_or_new_file(tmp_path):
    """A process killed with SIGKILL while writing leaves the previous complete file."""
    target = tmp_path / "big.json"
    atomic_write_json(target, {"version": 1})
    script = textwrap.dedent(f"""
        import os, sys
        from script.data_io import atomic_open
        with atomic_open({str(target)!r}) as handle:
            handle.write("[" + "1," * 1000)
            handle.flush()
            print("writing", flush=True)
            sys.stdin.readline()  # block until killed
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert json.loads(target.read_text(encoding="utf-8")) == {"version": 1}


def test_atomic_write_dir_puts_back_a_directory_left_aside_by_a_kill(tmp_path):
    from script.data_io import atomic_write_dir, recover_dir

    target = tmp_path / "state"
    atomic_write_dir(target, lambda d: (d / "v").write_text("1"))
    # A kill between "rename old aside" and "rename new in": only the aside copy exists.
    target.rename(tmp_path / ".state.old-123")
    assert recover_dir(target) and (target / "v").read_text() == "1"
    atomic_write_dir(target, lambda d: (d / "v").write_text("2"))
    assert (target / "v").read_text() == "2"
    assert not list(tmp_path.glob(".state.*"))


def test_a_json_array_file_is_refused_in_one_line_that_says_how_to_convert_it(tmp_path):
    import shlex

    rows = [{"id": i, "question": f"질문 {i}"} for i in range(3)]
    for name, text in (("pretty.json", json.dumps(rows, ensure_ascii=False, indent=2)),
                       ("one_line.jsonl", json.dumps(rows, ensure_ascii=False))):
        path = tmp_path / name
        path.write_text(text + "\n", encoding="utf-8")
        with pytest.raises(DataError) as caught:
            read_jsonl(path, rejects_path=tmp_path / "rejects.jsonl")
        message = str(caught.value)
        assert message.startswith(f"{path}: a JSON array, not JSON Lines") and "\n" not in message
        assert not (tmp_path / "rejects.jsonl").exists()  # one refusal, not a reject per physical line
        command = message.split("Convert it: ", 1)[1]
        argv = shlex.split(command.split(" > ")[0])
        converted = subprocess.run([sys.executable, *argv[1:]], capture_output=True, text=True, check=True).stdout
        out = tmp_path / "converted.jsonl"
        out.write_text(converted, encoding="utf-8")
        assert read_jsonl(out).records == rows
    # a JSON Lines file whose first record is an array is still read line by line
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text('[1, 2]\n{"id": 1}\n', encoding="utf-8")
    report = read_jsonl(mixed)
    assert report.records == [{"id": 1}] and "expected a JSON object" in report.rejects[0].reason
