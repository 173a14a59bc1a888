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
