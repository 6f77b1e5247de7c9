"""Generators of broken input files for the readers' fuzz tests (test_bad_input_fuzz.py).

Each generator takes a few valid records of the reader's own schema and returns ``BrokenCase``s:
the bytes of a whole file in which the valid records surround one broken line (or, for JSON
documents, one broken entry or a broken whole), plus what a correct reader must do with it.

Fault classes (the ``fault`` of a case, one row each in docs/RELIABILITY.md):

    truncated line, wrong type, missing field, unknown field, huge line, control characters,
    invalid UTF-8, lone surrogate, BOM, CRLF, line separators inside text, not an object,
    deep nesting, huge integer, out-of-range answer, duplicate id, empty file

Expectations (``expect``):

    reject   the broken line/entry is refused (a counted reject naming path:line or the entry,
             or a DataError/ConfigError naming it) and every valid record is kept
    keep     nothing is wrong (BOM, CRLF, unknown fields, U+2028 in text): every record is kept
    either   rejected, or passed through unchanged by a reader that filters rather than validates
             (duplicate ids, escaped control characters); never a crash, valid records all kept
    error    the whole file is unusable (empty, not an array, truncated document): a clear error
             that names the path
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

REJECT, KEEP, EITHER, ERROR = "reject", "keep", "either", "error"

# Values of the wrong JSON type for a field that should hold text, a list, an object or a number.
WRONG_TYPES: dict[str, list[Any]] = {
    "str": [12345, ["a list"], {"an": "object"}, True],
    "list": ["a string", {"an": "object"}, 7],
    "dict": ["a string", ["a", "list"], 7],
    "int": [["a list"], {"an": "object"}],
    # A table cell of an upstream export: numbers are text there ("5" or 5), lists/objects/booleans are not.
    "cell": [["a list"], {"an": "object"}, True],
}
UNKNOWN_FIELD = "x_unexpected_field"
DEEP = "[" * 100_000 + "]" * 100_000  # the decoder recurses once per level
HUGE_INTEGER = "9" * 5000  # beyond Python's 4300-digit int conversion limit


@dataclass(frozen=True)
class BrokenCase:
    fault: str  # the class (a row of the results table)
    name: str  # unique id within the class
    content: bytes
    expect: str  # REJECT, KEEP, EITHER or ERROR
    bad_lines: tuple[int, ...] = ()  # 1-based lines (JSONL) the reader must name when it rejects
    bad_entries: tuple[int, ...] = ()  # 0-based entries (JSON arrays) the reader must name
    good_keys: tuple[str, ...] = ()  # keys (see key_of) of the valid records, all to be kept
    line_keys: Mapping[int, str] = field(default_factory=dict)  # line -> key of each valid line

    @property
    def id(self) -> str:
        return f"{self.fault.replace(' ', '_')}-{self.name}"


def dumps(record: Any) -> bytes:
    return json.dumps(record, ensure_ascii=False).encode("utf-8")


def set_path(record: dict, path: Sequence[Any], value: Any) -> dict:
    """A deep copy of ``record`` with ``record[path[0]][path[1]]... = value``."""
    out = copy.deepcopy(record)
    target = out
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    return out


def del_path(record: dict, path: Sequence[Any]) -> dict:
    out = copy.deepcopy(record)
    target = out
    for part in path[:-1]:
        target = target[part]
    del target[path[-1]]
    return out


# ---------------------------------------------------------------------------
# JSONL files
# ---------------------------------------------------------------------------
@dataclass
class JsonlSpec:
    """What the reader expects of a line, for building the schema faults.

    ``fields`` maps a field path (tuple of keys/indices) to its kind in WRONG_TYPES; every path is
    also deleted once for "missing field" (``optional`` paths are not). ``answers`` is the field
    path of an answer and the out-of-range values to try. ``id_field`` is duplicated for
    "duplicate id". ``key_of`` gives the key a kept record is recognised by in the reader's output.
    """

    good: list[dict]
    key_of: Callable[[dict], str]
    fields: dict[tuple, str]
    optional: tuple[tuple, ...] = ()
    answers: tuple[tuple, list[Any]] | None = None
    id_field: tuple | None = None
    text_field: tuple | None = None  # a free-text field for control characters and U+2028
    huge_line_bytes: int = 0  # set by the test to data_io.MAX_LINE_BYTES + 1


def _assemble(spec: JsonlSpec, bad: list[bytes] | None, position: int, *, newline: bytes = b"\n",
              bom: bool = False, final_newline: bool = True) -> tuple[bytes, dict[int, str], tuple[int, ...]]:
    """File bytes: valid records with ``bad`` lines inserted at ``position``; returns line keys too."""
    lines: list[bytes] = [dumps(r) for r in spec.good]
    keys = [spec.key_of(r) for r in spec.good]
    bad = bad or []
    lines[position:position] = bad
    keys[position:position] = [None] * len(bad)
    bad_lines = tuple(range(position + 1, position + 1 + len(bad)))
    content = newline.join(lines) + (newline if final_newline else b"")
    if bom:
        content = b"\xef\xbb\xbf" + content
    line_keys = {i + 1: k for i, k in enumerate(keys) if k is not None}
    return content, line_keys, bad_lines


def jsonl_cases(spec: JsonlSpec) -> list[BrokenCase]:
    """Every fault class for a JSONL reader; the broken line sits among ``spec.good``."""
    good0 = spec.good[0]
    middle = len(spec.good) // 2
    cases: list[BrokenCase] = []
    all_keys = tuple(spec.key_of(r) for r in spec.good)

    def add(fault: str, name: str, bad: list[bytes], expect: str = REJECT, position: int = middle, **kw) -> None:
        content, line_keys, bad_lines = _assemble(spec, bad, position, **kw)
        cases.append(BrokenCase(fault, name, content, expect, bad_lines, (), all_keys, line_keys))

    # Syntax: the line is not a JSON object.
    line = dumps(dict(good0, **{UNKNOWN_FIELD: "x"}))  # a record that is not one of the good ones
    add("truncated line", "half", [line[: len(line) // 2]])
    add("truncated line", "last-line-no-newline", [line[: len(line) - 7]], position=len(spec.good),
        final_newline=False)
    multibyte = line.find("가".encode()) if "가".encode() in line else -1
    if multibyte > 0:  # cut inside a 3-byte Hangul syllable: invalid UTF-8 and invalid JSON at once
        add("truncated line", "inside-utf8-char", [line[: multibyte + 1]])
    add("not an object", "array", [b"[1, 2, 3]"])
    add("not an object", "string", [b'"just a string"'])
    add("not an object", "null", [b"null"])
    add("not an object", "number", [b"42"])
    add("deep nesting", "array-100k", [DEEP.encode()])
    add("deep nesting", "object-in-field", [b'{"a": ' + DEEP.encode() + b"}"])
    add("huge integer", "5000-digits", [b'{"n": ' + HUGE_INTEGER.encode() + b"}"])
    if spec.huge_line_bytes:
        filler = "가" * (spec.huge_line_bytes // 3 + 1)
        key = spec.text_field or next(iter(spec.fields))
        add("huge line", "over-limit", [dumps(set_path(good0, key, filler))])
    add("invalid UTF-8", "xff-in-string", [line.replace(b'"', b'"\xff\xfe', 1)])
    add("invalid UTF-8", "overlong-slash", [line.replace(b'"', b'"\xc0\xaf', 1)])
    add("invalid UTF-8", "latin1-line", [json.dumps({"text": "café"}, ensure_ascii=False).encode("latin-1")])
    add("lone surrogate", "high-alone", [line.replace(b'"', b'"\\ud800', 1)])
    add("lone surrogate", "low-alone", [line.replace(b'"', b'"\\udc00x', 1)])
    add("control characters", "raw-nul-in-string", [line.replace(b'"', b'"\x00', 1)])
    add("control characters", "raw-escape-in-string", [line.replace(b'"', b'"\x1b[31m', 1)])
    add("control characters", "raw-nul-outside", [b"\x00" + line])
    add("BOM", "bom-mid-file", [b"\xef\xbb\xbf" + line])

    # Encodings and line ends that are fine.
    add("BOM", "bom-at-start", [], KEEP, bom=True)
    add("CRLF", "crlf-everywhere", [], KEEP, newline=b"\r\n")
    add("CRLF", "crlf-bom", [], KEEP, newline=b"\r\n", bom=True)
    add("CRLF", "blank-lines", [b"", b"   ", b"\r"], KEEP)
    if spec.text_field is not None:
        # U+2028, U+0085 and \x1c are line breaks to str.splitlines(), not to JSONL: the lines stay whole.
        marked = [set_path(r, spec.text_field, _get(r, spec.text_field) + "\u2028이어\u0085짐")
                  for r in spec.good]
        keys = tuple(spec.key_of(r) for r in marked)
        body = b"\n".join(dumps(r) for r in marked) + b"\n"
        cases.append(BrokenCase("line separators inside text", "u2028-nel", body, KEEP, (), (), keys,
                                {i + 1: k for i, k in enumerate(keys)}))
        add("control characters", "escaped-nul-in-text",
            [dumps(set_path(dict(good0, **{UNKNOWN_FIELD: 1}), spec.text_field,
                            _get(good0, spec.text_field) + "\u0000\u001b"))], EITHER)

    # Schema: right syntax, wrong content.
    for path, kind in spec.fields.items():
        for value in WRONG_TYPES[kind]:
            add("wrong type", f"{_name(path)}={type(value).__name__}", [dumps(set_path(good0, path, value))])
        if path not in spec.optional:
            add("missing field", _name(path), [dumps(del_path(good0, path))])
            add("missing field", f"{_name(path)}=null", [dumps(set_path(good0, path, None))])
    extra = b"\n".join(dumps(dict(r, **{UNKNOWN_FIELD: [1, {"x": None}]})) for r in spec.good) + b"\n"
    cases.append(BrokenCase("unknown field", "extra-key", extra, KEEP, (), (), all_keys,
                            {i + 1: k for i, k in enumerate(all_keys)}))
    if spec.answers is not None:
        path, values = spec.answers
        for value in values:
            add("out-of-range answer", f"{_name(path)}={value!r}", [dumps(set_path(good0, path, value))])
    if spec.id_field is not None:
        twin = set_path(spec.good[1], spec.id_field, _get(spec.good[0], spec.id_field))
        add("duplicate id", "same-id-other-record", [dumps(twin)], EITHER)
        add("duplicate id", "same-record-twice", [dumps(spec.good[0])], EITHER)

    cases.append(BrokenCase("empty file", "zero-bytes", b"", ERROR))
    cases.append(BrokenCase("empty file", "blank-lines-only", b"\n \n\r\n", ERROR))
    return cases


def _get(record: dict, path: Sequence[Any]) -> Any:
    for part in path:
        record = record[part]
    return record


def _name(path: Sequence[Any]) -> str:
    return ".".join(str(p) for p in path)


# ---------------------------------------------------------------------------
# JSON documents (dictionaries: an array of entries; config files: one object)
# ---------------------------------------------------------------------------
def json_array_cases(good: list[dict], key_of: Callable[[dict], str], fields: dict[tuple, str],
                     text_field: tuple | None = None) -> list[BrokenCase]:
    """A JSON array of entries with one broken entry, and whole-document faults."""
    keys = tuple(key_of(e) for e in good)
    middle = len(good) // 2
    cases: list[BrokenCase] = []

    def doc(entries: list, indent: int | None = 1) -> bytes:
        return json.dumps(entries, ensure_ascii=False, indent=indent).encode("utf-8")

    def entry_case(fault: str, name: str, entry: Any, expect: str = REJECT) -> None:
        entries = list(good)
        entries.insert(middle, entry)
        cases.append(BrokenCase(fault, name, doc(entries), expect, (), (middle,), keys))

    for path, kind in fields.items():
        for value in WRONG_TYPES[kind]:
            entry_case("wrong type", f"{_name(path)}={type(value).__name__}", set_path(good[0], path, value))
        entry_case("missing field", _name(path), del_path(good[0], path))
        entry_case("missing field", f"{_name(path)}=null", set_path(good[0], path, None))
    for value in ("a string", 5, None, ["nested", "list"]):
        entry_case("not an object", f"entry={type(value).__name__}", value)
    entry_case("duplicate id", "same-entry-twice", good[0], EITHER)
    cases.append(BrokenCase("unknown field", "extra-key", doc([dict(e, **{UNKNOWN_FIELD: 1}) for e in good]),
                            KEEP, (), (), keys))
    if text_field is not None:
        entry_case("control characters", "escaped-nul-in-text",
                   set_path(good[0], text_field, _get(good[0], text_field) + "\u0000"), EITHER)
        marked = [set_path(e, text_field, _get(e, text_field) + "\u2028이어\u0085짐") for e in good]
        cases.append(BrokenCase("line separators inside text", "u2028-nel", doc(marked), KEEP, (), (),
                                tuple(key_of(e) for e in marked)))

    cases += document_cases(doc(good), expect_ok_keys=keys, wrong_top=("an object", {"entries": good}))
    return cases


def document_cases(valid: bytes, expect_ok_keys: tuple[str, ...] = (),
                   wrong_top: tuple[str, Any] | None = None) -> list[BrokenCase]:
    """Faults of a whole JSON document; ``valid`` is a good document of the reader's schema."""
    text = valid.decode("utf-8")
    cases = [
        BrokenCase("truncated line", "document-cut-in-half", valid[: len(valid) // 2], ERROR),
        BrokenCase("truncated line", "document-last-byte-missing", valid.rstrip()[:-1], ERROR),
        BrokenCase("invalid UTF-8", "xff-in-document", valid.replace(b'"', b'"\xff', 1), ERROR),
        BrokenCase("lone surrogate", "high-alone", valid.replace(b'"', b'"\\ud800', 1), ERROR),
        BrokenCase("control characters", "raw-nul-in-string", valid.replace(b'"', b'"\x00', 1), ERROR),
        BrokenCase("deep nesting", "array-100k", DEEP.encode(), ERROR),
        BrokenCase("huge integer", "5000-digits", HUGE_INTEGER.encode(), ERROR),
        BrokenCase("empty file", "zero-bytes", b"", ERROR),
        BrokenCase("empty file", "whitespace-only", b" \r\n\n", ERROR),
        BrokenCase("not an object", "number", b"42", ERROR),
        BrokenCase("not an object", "null", b"null", ERROR),
        BrokenCase("not an object", "string", b'"text"', ERROR),
        BrokenCase("BOM", "bom-at-start", b"\xef\xbb\xbf" + valid, KEEP, good_keys=expect_ok_keys),
        BrokenCase("CRLF", "crlf-everywhere", text.replace("\n", "\r\n").encode("utf-8"), KEEP,
                   good_keys=expect_ok_keys),
    ]
    if wrong_top is not None:
        label, value = wrong_top
        cases.append(BrokenCase("not an object", f"top-level-{label.replace(' ', '-')}", dumps(value), ERROR))
    return cases


def config_cases(valid: dict, fields: dict[tuple, str], required: Sequence[tuple] = ()) -> list[BrokenCase]:
    """A JSON config object: whole-document faults, wrong field types, missing required fields."""
    body = json.dumps(valid, ensure_ascii=False, indent=2).encode("utf-8")
    cases = document_cases(body, wrong_top=("an array", [valid]))
    for path, kind in fields.items():
        for value in WRONG_TYPES[kind]:
            cases.append(BrokenCase("wrong type", f"{_name(path)}={type(value).__name__}",
                                    dumps(set_path(valid, path, value)), ERROR))
    for path in required:
        cases.append(BrokenCase("missing field", _name(path), dumps(del_path(valid, path)), ERROR))
    cases.append(BrokenCase("unknown field", "extra-key", dumps(dict(valid, **{UNKNOWN_FIELD: {"x": [1]}})), KEEP))
    return cases
