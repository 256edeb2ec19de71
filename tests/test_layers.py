"""Imports flow one way: the layering of the package, checked on its source (static imports,
TYPE_CHECKING ones included). A new module that reaches upwards fails here with its file and line.

    base (errors, outputs, safe_load, ...) <- data <- engine <- metrics <- evaluation <- results
                                                         extract <- train <- cli (and the facade)
                                                         extract <- layouts <- cli
    results, verification, protocols, uncertainty <- visual <- jobs (a whole run) <- cli

and inside ``embeval/cli/`` no module imports another that imports it back (no cycle).
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "embeval"
BASE = {"errors", "outputs", "safe_load", "_vocab", "_launch", "_blas", "options"}
#: part -> the parts it may import (besides itself and BASE)
ALLOWED: dict[str, set[str]] = {
    "base": set(),
    "data": set(),
    "engine": {"data"},
    "metrics": {"engine"},
    "rerank": {"data", "engine"},
    "evaluation": {"data", "engine", "metrics", "rerank"},
    "results": {"data", "engine", "metrics", "evaluation"},
    "verification": {"data", "engine", "metrics", "evaluation", "results"},
    "protocols": {"data", "engine", "metrics", "evaluation", "rerank"},
    "uncertainty": {"data", "engine", "metrics", "evaluation", "results", "verification"},
    "extract": {"data", "engine", "evaluation"},
    "train": {"data", "engine", "metrics", "evaluation", "extract", "results"},
    "layouts": {"data", "extract"},  # benchmark files read as they ship, into extract's image lists
    "visual": {"data", "engine", "metrics", "evaluation", "results", "verification",
               "uncertainty"},  # visual/report.py draws saved results (uncertainty.saved)
    "jobs": {"data", "engine", "metrics", "evaluation", "results", "verification", "protocols",
             "uncertainty", "visual", "rerank"},  # a whole run: options -> ... -> output files
    "cli": {"data", "engine", "metrics", "evaluation", "results", "extract", "train", "verification",
            "protocols", "uncertainty", "visual", "rerank", "jobs", "layouts"},
    "facade": {"data", "engine", "metrics", "evaluation", "results", "extract", "train", "cli",
               "verification", "protocols", "uncertainty", "visual", "rerank", "jobs", "layouts"},
}


def part_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    head = rel.parts[0].removesuffix(".py")
    if head in ("__init__", "__main__"):
        return "facade"
    return "base" if head in BASE else head


def imported_parts(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] if node.module != "embeval" else [
                f"embeval.{a.name}" for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "embeval" and len(parts) > 1:
                head = parts[1]
                found.append((node.lineno, "base" if head in BASE else head))
    return found


def test_imports_flow_one_way() -> None:
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        mine = part_of(path)
        for line, other in imported_parts(path):
            if other in ("base", mine, "__version__") or other in ALLOWED[mine]:
                continue
            wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {mine} imports {other}")
    assert not wrong, "\n".join(wrong)


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    bad = PACKAGE / "engine" / "__init__.py"
    assert ("data" in {p for _, p in imported_parts(PACKAGE / "engine" / "rank.py")})
    assert all(p != "cli" for _, p in imported_parts(bad))
    probe = tmp_path / "probe.py"
    probe.write_text("from embeval.cli import main\nimport embeval.train.loop\n")
    assert [p for _, p in imported_parts(probe)] == ["cli", "train"]


CLI = PACKAGE / "cli"


def cli_imports(path: Path) -> set[str]:
    """The cli modules that ``path`` imports (``from . import x``, ``from .x import y``,
    ``embeval.cli.x``; at module level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:
                found |= {node.module.split(".")[0]} if node.module else {a.name for a in node.names}
            elif node.level == 0 and (node.module or "").startswith("embeval.cli."):
                found.add(node.module.split(".")[2])  # type: ignore[union-attr]
    return found - {"__init__"}


def cli_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import cycle of ``graph`` (module -> modules it imports), each once."""
    cycles: list[list[str]] = []

    def walk(node: str, path: list[str]) -> None:
        for nxt in sorted(graph.get(node, ())):
            if nxt == path[0]:
                cycles.append(path)
            elif nxt not in path and nxt > path[0]:  # each cycle from its smallest module
                walk(nxt, [*path, nxt])
    for start in sorted(graph):
        walk(start, [start])
    return cycles


def test_the_cli_modules_import_each_other_without_a_cycle() -> None:
    graph = {p.stem: cli_imports(p) for p in sorted(CLI.glob("*.py")) if p.stem != "__init__"}
    assert {"evaluate_cmds", "report"} <= graph["identify_cmd"] | graph["evaluate_cmds"]
    assert cli_cycles(graph) == []


def test_the_cycle_check_sees_a_cycle(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("from ._app import app\nfrom . import report\nfrom embeval.cli.x import y\n"
                     "def f():\n    from .identify_cmd import identify\n")
    assert cli_imports(probe) == {"_app", "report", "x", "identify_cmd"}
    assert cli_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
