"""The packages depend one way (docs/ARCHITECTURE.md): runtime at the bottom, importing no other
package of the project; handler, training and export on top of it; benchmarks and deploy over them.
Every import counts, including the ones inside functions."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("runtime", "handler", "training", "export", "benchmarks", "deploy")
# what each package may import from the project besides itself
ALLOWED = {
    "runtime": set(),
    "handler": {"runtime"},
    "training": {"runtime"},
    "export": {"runtime"},
    "benchmarks": {"runtime", "handler", "export"},
    "deploy": {"handler", "export"},  # cluster manifests, storage layout, health check, capacity plan
}


def project_imports(path: Path) -> set[str]:
    """The project packages a module imports, anywhere in its body."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found |= {name.split(".")[0] for name in names} & set(PACKAGES)
    return found


def import_graph() -> dict[str, set[str]]:
    graph = {package: set() for package in PACKAGES}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            graph[package] |= project_imports(path) - {package}
    return graph


@pytest.mark.parametrize("package", PACKAGES)
def test_package_imports_only_the_layers_below(package):
    offenders = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        extra = project_imports(path) - {package} - ALLOWED[package]
        if extra:
            offenders[str(path.relative_to(ROOT))] = sorted(extra)
    assert not offenders, f"{package} may import only {sorted(ALLOWED[package])}: {offenders}"


def test_the_package_graph_has_no_cycle():
    graph = import_graph()
    visiting, done = set(), set()

    def visit(node, trail):
        assert node not in visiting, f"import cycle: {' -> '.join(trail + [node])}"
        if node in done:
            return
        visiting.add(node)
        for child in sorted(graph[node]):
            visit(child, trail + [node])
        visiting.discard(node)
        done.add(node)

    for package in PACKAGES:
        visit(package, [])


def test_the_checker_sees_imports_inside_functions(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("import os\n\ndef f():\n    from training.train import main\n    import export.cli\n")
    assert project_imports(module) == {"training", "export"}
