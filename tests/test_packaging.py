"""The package metadata is the one list of dependencies: every third-party module the code imports
is declared (in requirements.txt or the extra that owns it), and pyproject.toml reads those files."""

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("script", "refine_scripts", "phase5_subject_training")
# Imported only where the extra is installed (each import is guarded with a clear message).
EXTRA_OWNED = {"lm_eval": "crosscheck", "deepspeed": "deepspeed", "pytest": "dev"}


def requirement_names(path: Path) -> set[str]:
    names = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.add(re.split(r"[\[=<>!~ ;]", line, maxsplit=1)[0].lower().replace("_", "-"))
    return names


def third_party_imports() -> set[str]:
    project = set(PACKAGES) | {"tests"}
    found = set()
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    found |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    found.add(node.module.split(".")[0])
    return {name for name in found if name not in project and name not in sys.stdlib_module_names}


def test_pyproject_reads_the_requirement_files():
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert set(project["project"]["dynamic"]) == {"dependencies", "optional-dependencies"}
    dynamic = project["tool"]["setuptools"]["dynamic"]
    assert dynamic["dependencies"]["file"] == ["requirements.txt"]
    extras = dynamic["optional-dependencies"]
    assert {"dev", "crosscheck", "deepspeed", "gpu"} <= set(extras)
    for spec in [dynamic["dependencies"], *extras.values()]:
        for name in spec["file"]:
            path = REPO / name
            assert path.is_file(), name
            for line in path.read_text(encoding="utf-8").splitlines():
                # setuptools keeps an inline comment inside the requirement string
                assert line.startswith("#") or "#" not in line, f"{name}: comment on a requirement line: {line}"


def test_every_imported_distribution_is_declared():
    runtime = requirement_names(REPO / "requirements.txt")
    extras = {"dev": requirement_names(REPO / "requirements-test.txt"),
              "crosscheck": requirement_names(REPO / "requirements-crosscheck.txt"),
              "deepspeed": requirement_names(REPO / "requirements-deepspeed.txt")}
    distributions = importlib.metadata.packages_distributions()
    missing = []
    for module in sorted(third_party_imports()):
        if module in EXTRA_OWNED:
            declared = extras[EXTRA_OWNED[module]]
            wanted = {module.lower().replace("_", "-")}
        else:
            declared = runtime
            wanted = {d.lower().replace("_", "-") for d in distributions.get(module, [module])}
        if not wanted & declared:
            missing.append(f"{module} (distribution {sorted(wanted)})")
    assert not missing, "imported but not declared: " + ", ".join(missing)


def test_nothing_declared_is_unused():
    imported = set()
    distributions = importlib.metadata.packages_distributions()
    for module in third_party_imports():
        imported |= {d.lower().replace("_", "-") for d in distributions.get(module, [module])}
    # companions used through transformers (quantization, tokenizers, the Trainer's TensorBoard logger)
    used_indirectly = {"bitsandbytes", "tokenizers", "tensorboard"}
    unused = requirement_names(REPO / "requirements.txt") - imported - used_indirectly
    assert not unused, f"declared in requirements.txt but never imported: {sorted(unused)}"
