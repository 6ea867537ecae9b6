"""The import rules of the layout (README "Where things live"), read from the source.

Test hypothesis: every module's imports, at module level and inside functions, obey
- `trm` and `hrm` never import each other;
- the model core (`model_core`) imports none of trm, hrm, puzzles, diagnostics, training, archs;
- the runtime package imports no other package of the project;
- no import cycle between top-level packages (the data flows one way);
- nothing imports the entry points `pretrain.py`, `evaluate.py` or `diagnostics/__main__.py` (tests included);
- the estimators (`diagnostics.estimators`, the Lyapunov estimator among them) import no model code;
- no study module (`diagnostics.studies.*`) imports another.
Each rule also has a negative test on a synthetic tree, so a rule that can never fire is caught.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("model_core", "training", "runtime", "puzzles", "trm", "hrm", "diagnostics", "archs", "pretrain", "evaluate")
ENTRY_POINTS = ("pretrain", "evaluate")
ENTRY_MODULES = ("diagnostics.__main__",)  # `python -m diagnostics`
MODEL_CODE = ("model_core", "trm", "hrm", "archs", "training", "puzzles")
SKIP_DIRS = {".venv", ".git", "outputs", "multirun", "data", "__pycache__", "wandb", "build"}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path, root: Path) -> set[str]:
    """Every module named by an import statement anywhere in the file (relative ones resolved);
    `from a import b` counts as both `a` and `a.b` (b may be a submodule)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    here = module_name(path, root)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)] if package else []
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    """module -> project modules it imports, for every .py file under `root`."""
    graph: dict[str, set[str]] = {}
    for path in sorted(root.rglob("*.py")):
        if SKIP_DIRS & set(path.relative_to(root).parts):
            continue
        graph[module_name(path, root)] = imports_of(path, root)
    return graph


def top(module: str) -> str:
    return module.split(".")[0]


def _in(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def _project(imported: set[str]) -> set[str]:
    return {m for m in imported if top(m) in PACKAGES}


def package_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Cycles in the graph of top-level packages (each reported once, as a closed path)."""
    edges: dict[str, set[str]] = {}
    for module, imported in graph.items():
        if top(module) in PACKAGES:
            edges.setdefault(top(module), set()).update(top(m) for m in _project(imported) if top(m) != top(module))
    cycles, seen = [], set()

    def visit(node: str, path: list[str]) -> None:
        for nxt in sorted(edges.get(node, ())):
            if nxt in path:
                cycle = path[path.index(nxt):] + [nxt]
                key = frozenset(cycle)
                if key not in seen:
                    seen.add(key)
                    cycles.append(cycle)
            elif len(path) < len(edges) + 1:
                visit(nxt, path + [nxt])

    for start in sorted(edges):
        visit(start, [start])
    return cycles


def violations(graph: dict[str, set[str]]) -> list[str]:
    """Every broken rule, one line each: 'rule: module imports what'."""
    found = []
    for module, imported in sorted(graph.items()):
        ours = _project(imported)
        for target in sorted(ours):
            if _in(module, "trm") and _in(target, "hrm") or _in(module, "hrm") and _in(target, "trm"):
                found.append(f"trm/hrm import each other: {module} imports {target}")
            if _in(module, "model_core") and top(target) in ("trm", "hrm", "puzzles", "diagnostics", "training", "archs"):
                found.append(f"model core imports {top(target)}: {module} imports {target}")
            if _in(module, "runtime") and top(target) != "runtime":
                found.append(f"runtime imports the project: {module} imports {target}")
            if (top(target) in ENTRY_POINTS and top(module) not in ENTRY_POINTS) or (target in ENTRY_MODULES and module != target):
                found.append(f"entry point imported: {module} imports {target}")
            if _in(module, "diagnostics.estimators") and top(target) in MODEL_CODE:
                found.append(f"estimator imports model code: {module} imports {target}")
            if (_in(module, "diagnostics.studies") and _in(target, "diagnostics.studies") and module != "diagnostics.studies"
                    and target != "diagnostics.studies" and top_study(module) != top_study(target)):
                found.append(f"study imports another study: {module} imports {target}")
    found += [f"import cycle between packages: {' -> '.join(cycle)}" for cycle in package_cycles(graph)]
    return found


def top_study(module: str) -> str:
    return ".".join(module.split(".")[:3])


def test_the_repository_obeys_every_rule():
    assert violations(import_graph(REPO)) == []


def test_the_graph_sees_function_level_imports():
    graph = import_graph(REPO)
    assert "archs" in graph["training.config"]
    assert any(_in(m, "runtime.hub") for m in graph["model_core.checkpoint"])  # imported inside a function


# --- each rule fires on a synthetic tree ------------------------------------------------------------

def _tree(root: Path, files: dict[str, str]) -> dict[str, set[str]]:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return import_graph(root)


CLEAN = {
    "runtime/__init__.py": "",
    "runtime/errors.py": "import os\n",
    "model_core/__init__.py": "",
    "model_core/layers.py": "from runtime.errors import X\n",
    "trm/__init__.py": "from model_core.layers import L\n",
    "hrm/__init__.py": "from model_core import layers\n",
    "archs.py": "import trm\nimport hrm\n",
    "puzzles/__init__.py": "from runtime import errors\n",
    "training/__init__.py": "import archs\nfrom puzzles import x\n",
    "diagnostics/__init__.py": "",
    "diagnostics/estimators/__init__.py": "",
    "diagnostics/estimators/lyapunov.py": "import torch\nfrom runtime.errors import E\n",
    "diagnostics/studies/__init__.py": "from diagnostics.studies import spectrum, basin\n",
    "diagnostics/studies/spectrum.py": "from diagnostics.adapters import x\n",
    "diagnostics/studies/basin.py": "from diagnostics.estimators import lyapunov\n",
    "pretrain.py": "from training import loop\n",
    "evaluate.py": "from training import evaluate_job\n",
    "tests/test_x.py": "from training import evaluate_job\n",
}


def test_a_clean_synthetic_tree_passes(tmp_path):
    assert violations(_tree(tmp_path, CLEAN)) == []


@pytest.mark.parametrize("files, rule", [
    ({"trm/model.py": "def f():\n    from hrm.model import HRMCore\n"}, "trm/hrm import each other"),
    ({"hrm/model.py": "import trm\n"}, "trm/hrm import each other"),
    ({"model_core/checkpoint.py": "def load():\n    import archs\n"}, "model core imports archs"),
    ({"model_core/data.py": "from puzzles.layout import read\n"}, "model core imports puzzles"),
    ({"model_core/x.py": "from training import loop\n"}, "model core imports training"),
    ({"model_core/y.py": "import diagnostics.studies\n"}, "model core imports diagnostics"),
    ({"runtime/hub.py": "from model_core.checkpoint import pick\n"}, "runtime imports the project"),
    ({"puzzles/layout.py": "from training import config\n"}, "import cycle between packages"),
    ({"diagnostics/report.py": "import pretrain\n"}, "entry point imported"),
    ({"tests/test_cli.py": "from evaluate import EvaluateConfig\n"}, "entry point imported"),
    ({"tests/test_study.py": "from diagnostics.__main__ import run_study\n"}, "entry point imported"),
    ({"diagnostics/estimators/lyapunov.py": "from model_core.layers import rms_norm\n"}, "estimator imports model code"),
    ({"diagnostics/estimators/statistics.py": "def f():\n    from trm import SPEC\n"}, "estimator imports model code"),
    ({"diagnostics/studies/basin.py": "from diagnostics.studies.spectrum import helper\n"}, "study imports another study"),
    ({"diagnostics/studies/basin.py": "from diagnostics.studies import spectrum\n"}, "study imports another study"),
    ({"diagnostics/studies/basin.py": "from ..studies import spectrum\n"}, "study imports another study"),
])
def test_each_rule_fires(tmp_path, files, rule):
    found = violations(_tree(tmp_path, {**CLEAN, **files}))
    assert any(line.startswith(rule) for line in found), found
