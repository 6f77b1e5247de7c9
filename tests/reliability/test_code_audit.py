"""Code audit: every file the product writes goes through data_io's atomic writers, and nothing loads
pickles or remote code. A new non-atomic write or unsafe load fails here with its file:line.

A write is atomic when it is data_io itself, inside ``with atomic_open(...)``, or inside a function
that builds the temp folder of ``atomic_write_dir`` (the folder is renamed into place whole) or is
called only from such functions (followed through the module's own calls). The few other writes
are listed in ALLOWED with the reason they are safe.

    python -m pytest tests/reliability/test_code_audit.py -q
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PRODUCT_DIRS = ("script", "refine_scripts", "phase5_subject_training")
WRITE_METHODS = {"write_text", "write_bytes", "savefig", "to_json", "to_csv", "to_parquet", "save_pretrained",
                 "save_to_disk"}
WRITE_FUNCTIONS = {("json", "dump"), ("torch", "save"), ("np", "save"), ("numpy", "save"), ("pickle", "dump"),
                   ("yaml", "dump"), ("yaml", "safe_dump")}

# (file, enclosing function) -> why this write is safe without data_io.
ALLOWED: dict[tuple[str, str], str] = {
    ("script/bench/bench_data.py", "scale_file"): "benchmark input, written inside the benchmark's own temp work folder",
    ("script/smoke_real_shape.py", "reset_peak"): "a control write to the kernel (/proc/self/clear_refs), no file",
    ("script/bench/bench_data.py", "run_module"): "stdout/stderr logs of a timed subprocess, streamed as it runs",
    ("script/stage_runner.py", "_send_output_to"):
        "the live log of a side-by-side lane (tail -f), streamed as it runs like the pipeline log itself",
    ("script/exclude_test_from_training.py", "run_bench"): "--bench data inside a TemporaryDirectory",
    ("refine_scripts/refine_plain_text.py", "ShardWriter._open_next"):
        "shards are opened only inside the temp folder of refine_all's atomic_write_dir",
    ("script/extend_tokenizer.py", "build_extended_tokenizer"):
        "staging_dir is a TemporaryDirectory; the result is saved by save_extended_model (atomic_write_dir)",
    ("phase5_subject_training/divisions.py", "_annotate_into"):
        "append journal: a resume truncates it to the length committed in the atomically written state file",
    ("phase5_subject_training/divisions.py", "_annotate_into.commit"):
        "append journal: each commit fsyncs, then records the committed length in the state file atomically",
}


@dataclass
class Write:
    file: str
    line: int
    function: str
    call: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.call} in {self.function or '<module>'}"


def product_files() -> list[Path]:
    return sorted(p for d in PRODUCT_DIRS if (REPO / d).is_dir() for p in (REPO / d).rglob("*.py"))


def _call_name(node: ast.Call) -> tuple[str | None, str]:
    func = node.func
    if isinstance(func, ast.Attribute):
        owner = func.value.id if isinstance(func.value, ast.Name) else None
        return owner, func.attr
    if isinstance(func, ast.Name):
        return None, func.id
    return None, ""


def _open_mode(node: ast.Call, owner: str | None, name: str) -> str | None:
    """The mode of open(path, mode) / Path.open(mode) / os.fdopen(fd, mode), or None when not an open."""
    if name not in ("open", "fdopen") or owner not in (None, "os") and name == "fdopen":
        return None
    position = 0 if owner is not None and name == "open" else 1  # path.open("w") vs open(path, "w")
    mode = next((k.value for k in node.keywords if k.arg == "mode"), None)
    if mode is None and len(node.args) > position:
        mode = node.args[position]
    if isinstance(mode, ast.Constant) and isinstance(mode.value, str):
        return mode.value
    return "r" if mode is None else "?"


def _is_atomic_with(node: ast.AST) -> bool:
    return isinstance(node, ast.With) and any(
        isinstance(item.context_expr, ast.Call) and _call_name(item.context_expr)[1] == "atomic_open"
        for item in node.items)


def atomic_functions(tree: ast.Module) -> set[str]:
    """Names of the module's functions that only ever run inside an atomic write: those passed to
    ``atomic_write_dir(target, fn)``, and, to a fixed point, those called only from such functions
    or from inside ``with atomic_open(...)``."""
    builders = {arg.id for node in ast.walk(tree) if isinstance(node, ast.Call)
                and _call_name(node)[1] == "atomic_write_dir" for arg in node.args[1:2] if isinstance(arg, ast.Name)}
    calls: dict[str, list[tuple[str, bool]]] = {}  # callee -> [(caller, call inside atomic_open)]

    def walk(node: ast.AST, caller: str, atomic: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                walk(child, child.name, False)
                continue
            if isinstance(child, ast.Call) and isinstance(child.func, ast.Name):
                calls.setdefault(child.func.id, []).append((caller, atomic))
            walk(child, caller, atomic or _is_atomic_with(child))

    walk(tree, "<module>", False)
    atomic = set(builders)
    changed = True
    while changed:
        changed = False
        for callee, sites in calls.items():
            if callee not in atomic and sites and all(inside or caller in atomic for caller, inside in sites):
                atomic.add(callee)
                changed = True
    return atomic


class Scanner(ast.NodeVisitor):
    """Collects write calls that are not inside an atomic context."""

    def __init__(self, file: str, tree: ast.Module) -> None:
        self.file = file
        self.stack: list[str] = []
        self.atomic_depth = 0
        self.writes: list[Write] = []
        self.builders = atomic_functions(tree)

    def _function(self, node) -> None:
        self.stack.append(node.name)
        builder = node.name in self.builders
        self.atomic_depth += builder
        self.generic_visit(node)
        self.atomic_depth -= builder
        self.stack.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = _function

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.stack.append(node.name)
        self.generic_visit(node)
        self.stack.pop()

    def visit_With(self, node: ast.With) -> None:
        atomic = _is_atomic_with(node)
        self.atomic_depth += atomic
        self.generic_visit(node)
        self.atomic_depth -= atomic

    def visit_Call(self, node: ast.Call) -> None:
        owner, name = _call_name(node)
        mode = _open_mode(node, owner, name)
        # yaml.safe_dump(data) returns text; with a stream (second argument) it writes
        streams = len(node.args) > 1 or any(k.arg == "stream" for k in node.keywords) or name == "save"
        writes = ((mode is not None and any(c in mode for c in "wax+?"))
                  or name in WRITE_METHODS
                  or ((owner, name) in WRITE_FUNCTIONS and streams))
        if writes and not self.atomic_depth:
            call = f"{owner}.{name}" if owner else name
            self.writes.append(Write(self.file, node.lineno, ".".join(self.stack), call + (f"({mode!r})" if mode else "")))
        self.generic_visit(node)


def non_atomic_writes() -> list[Write]:
    found = []
    for path in product_files():
        rel = path.relative_to(REPO).as_posix()
        if rel == "script/data_io.py":
            continue  # the implementation of the atomic writers
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=rel)
        scanner = Scanner(rel, tree)
        scanner.visit(tree)
        found += scanner.writes
    return found


@pytest.mark.fault("code audit", "non-atomic writes in product code", "script/, refine_scripts/, phase5_subject_training/")
def test_every_write_goes_through_an_atomic_writer(record_property):
    writes = non_atomic_writes()
    unexplained = [w for w in writes if (w.file, w.function) not in ALLOWED]
    assert not unexplained, ("writes outside data_io's atomic writers (use atomic_write_*/atomic_open/"
                             "atomic_write_dir/atomic_save_figure, or add a justified ALLOWED entry):\n"
                             + "\n".join(map(str, unexplained)))
    stale = [key for key in ALLOWED if not any((w.file, w.function) == key for w in writes)]
    assert not stale, f"ALLOWED entries that no longer match a write (remove them): {stale}"
    record_property("outcome", f"0 unexplained writes ({len(writes)} allowed with a reason)")


def test_the_audit_catches_a_plain_write(tmp_path):
    """The scanner itself: a bare write is found, the same write inside atomic contexts is not."""
    source = (
        "import json\nfrom script.data_io import atomic_open, atomic_write_dir\n"
        "def bad(p):\n    p.write_text('x')\n    with open(p, 'w') as h:\n        json.dump({}, h)\n"
        "def good(p):\n    with atomic_open(p) as h:\n        h.write('x')\n        json.dump({}, h)\n"
        "def build(tmp):\n    (tmp / 'a').write_text('x')\n    helper(tmp)\n"
        "def helper(tmp):\n    (tmp / 'b').write_text('x')\n"
        "def shared(p):\n    p.write_text('x')\n"
        "atomic_write_dir('out', build)\nshared('elsewhere')\n"
    )
    tree = ast.parse(source)
    scanner = Scanner("example.py", tree)
    scanner.visit(tree)
    assert [(w.line, w.function) for w in scanner.writes] == [(4, "bad"), (5, "bad"), (6, "bad"), (17, "shared")]


# ---------------------------------------------------------------------------
# Unsafe loading
# ---------------------------------------------------------------------------
def unsafe_loads() -> list[str]:
    problems = []
    for path in product_files():
        rel = path.relative_to(REPO).as_posix()
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=rel)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
                if any(n and n.split(".")[0] in ("pickle", "dill", "joblib", "cloudpickle") for n in names):
                    problems.append(f"{rel}:{node.lineno}: imports a pickle library")
            if not isinstance(node, ast.Call):
                continue
            owner, name = _call_name(node)
            keywords = {k.arg: k.value for k in node.keywords}
            flag = keywords.get("trust_remote_code")
            if flag is not None and not (isinstance(flag, ast.Constant) and flag.value is False):
                problems.append(f"{rel}:{node.lineno}: trust_remote_code is not False")
            safetensors = keywords.get("use_safetensors")
            if isinstance(safetensors, ast.Constant) and safetensors.value is False:
                problems.append(f"{rel}:{node.lineno}: use_safetensors=False")
            if (owner, name) == ("torch", "load"):
                only = keywords.get("weights_only")
                if not (isinstance(only, ast.Constant) and only.value is True):
                    problems.append(f"{rel}:{node.lineno}: torch.load without weights_only=True")
            if name in ("from_pretrained",) and owner in ("AutoModelForCausalLM", "AutoModel") \
                    and "use_safetensors" not in keywords:
                problems.append(f"{rel}:{node.lineno}: {owner}.from_pretrained without use_safetensors")
    return problems


@pytest.mark.fault("code audit", "unsafe loading (pickle, torch.load, remote code)", "script/, refine_scripts/, phase5")
def test_no_pickle_no_remote_code_no_unchecked_torch_load(record_property):
    problems = unsafe_loads()
    assert not problems, "\n".join(problems)
    record_property("outcome", "no pickle imports, torch.load always weights_only=True, no trust_remote_code")
