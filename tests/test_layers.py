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


def assert_acyclic(graph: dict[str, set[str]]) -> None:
    """Fails naming the first import cycle found in ``graph`` (node -> the nodes it imports)."""
    visiting, done = set(), set()

    def visit(node, trail):
        assert node not in visiting, f"import cycle: {' -> '.join(trail + [node])}"
        if node in done:
            return
        visiting.add(node)
        for child in sorted(graph.get(node, ())):
            visit(child, trail + [node])
        visiting.discard(node)
        done.add(node)

    for node in sorted(graph):
        visit(node, [])


def test_the_package_graph_has_no_cycle():
    assert_acyclic(import_graph())


def test_the_checker_sees_imports_inside_functions(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("import os\n\ndef f():\n    from training.train import main\n    import export.cli\n")
    assert project_imports(module) == {"training", "export"}


# What ships inside the .mar (export/archive.py's code_files) against what runs only on the host
# (server launcher, watchdog, page, client, records CLI, TorchServe config). Archive code may import
# the runtime and other archive modules, never a host tool, which the worker would not find.
HOST_ONLY_THIRD_PARTY = {"locust", "fastapi", "uvicorn", "matplotlib", "selenium", "training", "export", "benchmarks"}


def archive_modules() -> dict[str, Path]:
    from export.archive import code_files

    return {target.removesuffix(".py").replace("/", "."): ROOT / source for source, target in code_files()}


def is_main_guard(node: ast.AST) -> bool:
    return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare) and isinstance(node.test.left, ast.Name)
            and node.test.left.id == "__name__")


def imported_modules(path: Path) -> set[str]:
    """Every module imported anywhere in a file, except under ``if __name__ == "__main__":``, which a
    worker importing the module never runs."""
    tree = ast.parse(path.read_text(), str(path))
    tree.body = [node for node in tree.body if not is_main_guard(node)]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def test_archive_code_imports_no_host_module():
    shipped = archive_modules()
    handler_host = {f"handler.{p.stem}" for p in (ROOT / "handler").glob("*.py")} - set(shipped) - {"handler.__init__"}
    offenders = {}
    for name, path in shipped.items():
        bad = {m for m in imported_modules(path) if m in handler_host or m.split(".")[0] in HOST_ONLY_THIRD_PARTY}
        if bad:
            offenders[name] = sorted(bad)
    assert not offenders, f"archive code imports host-only modules: {offenders}"
    assert {"handler.server", "handler.watchdog", "handler.page", "handler.client"} <= handler_host


def test_the_archive_check_sees_a_host_import(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("from handler.tsconfig import read\nimport fastapi\n\nif __name__ == '__main__':\n    import locust\n")
    assert {"handler.tsconfig", "handler.tsconfig.read", "fastapi"} <= imported_modules(module)
    assert "locust" not in imported_modules(module)


def handler_graph() -> dict[str, set[str]]:
    """handler module -> the handler modules it imports (anywhere in its body, main guards included)."""
    names = {f"handler.{p.stem}" for p in (ROOT / "handler").glob("*.py")}
    graph = {}
    for path in (ROOT / "handler").glob("*.py"):
        found = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
            elif isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
        graph[f"handler.{path.stem}"] = (found & names) - {f"handler.{path.stem}"}
    return graph


def test_no_import_circle_inside_handler():
    """records.py (archive) and records_cli.py (host) once imported each other; no two handler modules may."""
    graph = handler_graph()
    assert_acyclic(graph)
    records = {"handler.records", "handler.records_store", "handler.records_settings", "handler.records_query"}
    assert "handler.records_store" in graph["handler.records_cli"]
    assert not any("handler.records_cli" in graph[module] for module in records)
