"""Layers point one way: no module imports from a layer above its own, and no modules import each other
in a circle (an AST check of every import).

A small AST walk rather than import-linter: it needs no extra dependency, sees imports inside
functions too (we import lazily in many places), and names each offending file:line or cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"

# Low to high; a module may import its own layer and the ones below. viz, tracking and progress
# import nothing of ours but captioner.errors: leaf services that data, evaluation and training use.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("runtime", ("captioner.errors", "captioner.runtime")),
    (
        "data/model/metrics",
        (
            "captioner.data",
            "captioner.model",
            "captioner.metrics",
            "captioner.ablation",
            "captioner.viz",
            "captioner.tracking",
            "captioner.progress",
        ),
    ),
    ("evaluation/decode", ("captioner.evaluation", "captioner.decode")),
    (
        "train/captioning/export",
        ("captioner.train", "captioner.captioning", "captioner.export", "captioner.config"),
    ),
    (
        "entry points",
        (
            "captioner.cli",
            "captioner.commands",
            "captioner.prepare",
            "captioner.cache",
            "captioner.ui",
            "hydra_plugins",
            "train",
            "evaluate",
            "caption",
        ),
    ),
]
ENTRY_SCRIPTS = ("train.py", "evaluate.py", "caption.py")
PACKAGE_ROOT = "captioner"  # its __init__ holds only the version: the bottom layer, matched exactly


def layer_of(module: str) -> int | None:
    """Index in LAYERS of the longest prefix naming ``module``; None for third-party modules."""
    if module == PACKAGE_ROOT:
        return 0
    best, best_len = None, -1
    for level, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = level, len(prefix)
    return best


def module_name(path: Path) -> str:
    """Dotted module name of a file under src/ (or a top-level script)."""
    rel = path.relative_to(SRC) if path.is_relative_to(SRC) else path.relative_to(REPO)
    parts = list(rel.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path, module: str | None = None) -> list[tuple[str, int]]:
    """Every module ``path`` imports, at module level or inside a function, with its line."""
    tree = ast.parse(path.read_text(), filename=str(path))
    module = module or module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import: resolve against this file's package
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module or ""
            found.append((name, node.lineno))
            # `from captioner import evaluation` imports a submodule: judge that one
            found += [
                (f"{name}.{alias.name}", node.lineno) for alias in node.names if layer_of(name) is not None
            ]
    return found


def project_files() -> list[Path]:
    return sorted(SRC.rglob("*.py")) + [REPO / s for s in ENTRY_SCRIPTS]


def upward_imports(path: Path, module: str, shown: str) -> list[str]:
    """``shown:line: <layer> imports <module> (<higher layer>)`` for each import above ``module``'s layer."""
    own = layer_of(module)
    assert own is not None, f"{shown} is in no layer: add its module to LAYERS in {Path(__file__).name}"
    out, lines = [], set()
    for name, line in imports(path, module):
        target = layer_of(name)
        if target is not None and target > own and line not in lines:  # one report per import line
            lines.add(line)
            out.append(f"{shown}:{line}: {LAYERS[own][0]} imports {name} ({LAYERS[target][0]})")
    return out


def violations() -> list[str]:
    """Every upward import in the project."""
    return [
        v
        for path in project_files()
        for v in upward_imports(path, module_name(path), str(path.relative_to(REPO)))
    ]


def test_no_module_imports_from_a_higher_layer():
    found = violations()
    assert not found, "upward imports:\n" + "\n".join(found)


def test_evaluation_and_captioning_entry_points_do_not_import_training():
    for script in (
        "evaluate.py",
        "caption.py",
        "src/captioner/commands/evaluate.py",
        "src/captioner/commands/caption.py",
    ):
        bad = [
            f"{script}:{line}: {name}"
            for name, line in imports(REPO / script)
            if name.startswith("captioner.train")
        ]
        assert not bad, bad


def test_the_check_reports_an_upward_import_by_file_and_line(tmp_path):
    # What the loop once did: import the sweeper plugin (entry-point layer) inside a function.
    loop = tmp_path / "loop.py"
    loop.write_text(
        "from captioner.runtime import checkpoint\n"
        "def report():\n"
        "    from hydra_plugins.captioner_optuna_sweeper import sweep_trial\n"
        "    from . import setup\n"
    )
    found = upward_imports(loop, "captioner.train.loop", "loop.py")
    assert found == [
        "loop.py:3: train/captioning/export imports hydra_plugins.captioner_optuna_sweeper (entry points)"
    ]
    evaluation = tmp_path / "core.py"
    evaluation.write_text("from captioner.train import loop\n")
    assert upward_imports(evaluation, "captioner.evaluation.core", "core.py") == [
        "core.py:1: evaluation/decode imports captioner.train (train/captioning/export)"
    ]


def imported_modules(path: Path, module: str, known: set[str]) -> set[str]:
    """The modules of ``known`` that ``path`` imports: ``from p import x`` names p.x when that is a
    module (a submodule import), else p; ``import a.b.c`` names the longest known prefix."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]

    def known_prefix(name: str) -> str | None:
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {known_prefix(alias.name) for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module or ""
            found |= {known_prefix(f"{name}.{alias.name}") for alias in node.names}
    return found - {None, module}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every set of modules that import each other in a circle (Tarjan's strongly connected components)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = stack[stack.index(node) :]
            del stack[stack.index(node) :]
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def import_graph() -> dict[str, set[str]]:
    """Which of our modules (under src/) each of them imports, at module level or inside a function."""
    files = {module_name(path): path for path in sorted(SRC.rglob("*.py"))}
    return {module: imported_modules(path, module, set(files)) for module, path in files.items()}


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "modules importing each other in a circle:\n" + "\n".join(
        " <-> ".join(c) for c in found
    )


def test_the_check_finds_a_cycle_through_a_lazy_submodule_import(tmp_path):
    # What attention.py once did: import fast_decode, which imports decoder, which imports attention.
    files = {
        "captioner.model.attention": "from captioner.model.fast_decode import grouped_attention\n",
        "captioner.model.fast_decode": "def f():\n    from captioner.model import decoder\n",
        "captioner.model.decoder": "from .attention import SoftAttention\n",
        "captioner.model.state": "import torch\n",
    }
    graph = {}
    for module, text in files.items():
        path = tmp_path / f"{module}.py"
        path.write_text(text)
        graph[module] = imported_modules(path, module, set(files))
    assert graph["captioner.model.state"] == set()
    assert cycles(graph) == [
        ["captioner.model.attention", "captioner.model.decoder", "captioner.model.fast_decode"]
    ]
    graph["captioner.model.decoder"] = {"captioner.model.state"}
    assert cycles(graph) == []
