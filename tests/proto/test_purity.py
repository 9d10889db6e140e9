"""hotline/proto/ is sans-IO: it may not import sockets, clocks, threads, trio or sqlite."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PROTO = Path(__file__).resolve().parents[2] / "hotline" / "proto"
FORBIDDEN = {
    "trio", "socket", "sqlite3", "time", "asyncio", "selectors", "threading",
    "subprocess", "select", "signal", "random", "hotline.daemon", "hotline.transport",
    "hotline.store",
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", sorted(PROTO.glob("*.py")), ids=lambda p: p.name)
def test_proto_module_imports_no_io(path: Path) -> None:
    bad = {
        name for name in _imports(path)
        if any(name == f or name.startswith(f + ".") for f in FORBIDDEN)
    }
    assert not bad, f"{path.name} imports I/O or clock modules: {sorted(bad)}"
