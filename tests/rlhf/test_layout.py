"""The shape of the core: every rlhf module imports without Ray, vLLM or DeepSpeed; the
subpackages depend on each other without loops; only the CLI reaches the Ray layers."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.no_ray  # runs beside the `alone` tests in make test

ROOT = Path(__file__).resolve().parents[2]
CORE = ROOT / "rlhf"


def _modules() -> list[str]:
    names = []
    for path in sorted(CORE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def _imports(path: Path) -> list[str]:
    """Every module named by an import anywhere in the file (top level or inside functions)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
    return found


def test_no_core_module_imports_ray_vllm_or_deepspeed():
    code = (
        "import importlib, json, sys\n"
        f"for name in {_modules()!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(m for m in ('ray', 'vllm', 'deepspeed') if m in sys.modules)))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.splitlines()[-1]) == []


def _package_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in CORE.rglob("*.py"):
        rel = path.relative_to(CORE).parts
        own = rel[0].removesuffix(".py")
        for target in _imports(path):
            parts = target.split(".")
            if parts[0] == "rlhf" and len(parts) > 1 and parts[1] != own:
                graph.setdefault(own, set()).add(parts[1])
    return graph


def test_subpackages_depend_on_each_other_without_loops():
    graph = _package_graph()
    state: dict[str, str] = {}

    def visit(node: str, trail: list[str]) -> None:
        if state.get(node) == "done":
            return
        assert state.get(node) != "open", f"import loop: {' -> '.join(trail + [node])}"
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            visit(nxt, trail + [node])
        state[node] = "done"

    for node in sorted(graph):
        visit(node, [])
    assert "cli" not in set().union(*graph.values()), "nothing imports the CLI"


def test_only_the_cli_reaches_the_ray_layers():
    for path in CORE.rglob("*.py"):
        if path.relative_to(CORE).parts[0] == "cli":
            continue
        reached = {name.split(".")[0] for name in _imports(path)} & {"actors", "serve", "tune"}
        assert not reached, f"{path.relative_to(ROOT)} imports {sorted(reached)}"


def test_the_core_is_shallow():
    top = [p.name for p in CORE.glob("*.py")]
    assert len(top) <= 6, top
    for root in ("rlhf", "actors", "serve", "tune"):
        for path in (ROOT / root).rglob("*.py"):
            lines = path.read_text().count("\n")
            assert lines <= 400, f"{path.relative_to(ROOT)} has {lines} lines"
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    length = node.end_lineno - node.lineno + 1
                    assert length <= 60, f"{path.relative_to(ROOT)}:{node.lineno} {node.name} has {length} lines"
