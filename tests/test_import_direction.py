"""Architecture rules: common imports no role package; the server never touches images."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def _imports(package: str) -> list[tuple[str, str]]:
    found = []
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                found += [(str(path.relative_to(ROOT)), a.name) for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.append((str(path.relative_to(ROOT)), node.module))
    return found


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("common", ("client", "server", "simulations")),
        ("server", ("client", "simulations", "cv2", "pydicom", "PIL", "monai.transforms")),
        ("client", ("server", "simulations")),
    ],
)
def test_package_does_not_import(package, forbidden):
    bad = [(f, m) for f, m in _imports(package) if m.split(".")[0] in forbidden or m in forbidden]
    assert bad == [], f"{package} must not import {forbidden}: {bad}"


def test_rule_checker_sees_imports():
    # The checker itself must find something, or the rules above would pass vacuously.
    assert any(m == "common.config" for _, m in _imports("server"))


PACKAGES = ("common", "client", "server", "simulations")


def _module_graph() -> dict[str, set[str]]:
    """Project module -> project modules it imports, anywhere in the file (in functions too)."""
    modules = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            modules[name] = path

    def resolve(target: str) -> str | None:
        while target and target not in modules:
            target = target.rpartition(".")[0]
        return target or None

    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            for t in targets:
                r = resolve(t)
                if r and r != name:
                    graph[name].add(r)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circle_between_the_projects_modules_in_function_imports_counted():
    graph = _module_graph()
    assert len(graph) > 100 and any(graph.values())  # the checker sees the code
    assert _cycles(graph) == []


def test_the_cycle_checker_finds_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]


def test_common_imports_no_flower():
    assert [(f, m) for f, m in _imports("common") if m.split(".")[0] == "flwr"] == []


def test_client_has_at_most_six_loose_modules_and_no_module_is_over_400_lines():
    loose = sorted(p.name for p in (ROOT / "client").glob("*.py"))
    assert len(loose) <= 6, loose
    long = [str(p.relative_to(ROOT)) for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")
            if len(p.read_text().splitlines()) > 400]
    assert long == []
