"""DESIGN section 1's dependency rules, enforced on the import graph of the source (every import
statement, at module level or inside a function) and on what importing a layer really loads."""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("catalog", "pipeline", "training", "jobs")
HEAVY = ("torch", "onnxruntime", "mediapipe", "whisper", "ai_edge_litert", "dlib", "cv2", "ray")
TRAINING_MAY_USE = ("catalog", "pipeline.models", "pipeline.media")
RAY_ALLOWED = ("pipeline.run", "training.launcher")  # the runner's folder and the trainer's launcher
RAY_LAZY_ALLOWED = {"catalog.adapters"}  # catalog.to_ray_dataset, imported inside the function


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, e.g. "pipeline.stages.faces.stage"
    target: str  # the imported module, e.g. "pipeline.models.faces"
    lazy: bool  # inside a function (runs when called, not at import)
    line: int

    def __str__(self) -> str:
        when = "lazily" if self.lazy else "at import"
        return f"{self.module}:{self.line} imports {self.target} {when}"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[Import]:
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    out: list[Import] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                out.extend(Import(module, a.name, lazy, child.lineno) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                for alias in child.names:  # `from pipeline.models import faces` imports a module
                    candidate = f"{base}.{alias.name}"
                    is_module = (REPO / candidate.replace(".", "/")).with_suffix(".py").is_file() or (
                        REPO / candidate.replace(".", "/") / "__init__.py").is_file()
                    out.append(Import(module, candidate if is_module else base, lazy, child.lineno))
            visit(child, inner)

    visit(tree, False)
    return out


def _graph() -> list[Import]:
    edges: list[Import] = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            edges += _imports(path)
    return edges


EDGES = _graph()


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _ours(name: str) -> bool:
    return any(_within(name, p) for p in PACKAGES)


def test_the_graph_sees_the_known_edges():
    """The parser resolves absolute, relative and `from package import module` forms."""
    seen = {(e.module, e.target) for e in EDGES}
    assert ("pipeline.stages.faces.stage", "pipeline.models.faces") in seen
    assert ("pipeline.stages.analyze.emotion", "pipeline.models.emotion") in seen
    assert ("catalog", "catalog.select") in seen
    assert any(e.module == "pipeline.run.cluster" and e.target == "ray" for e in EDGES)


def test_catalog_imports_only_pyarrow_and_the_standard_library_at_import():
    stdlib = set(sys.stdlib_module_names)
    bad = [str(e) for e in EDGES if _within(e.module, "catalog") and not e.lazy
           and not (_within(e.target, "catalog") or _within(e.target, "pyarrow")
                    or e.target.split(".")[0] in stdlib or e.target == "__future__")]
    assert not bad, "catalog must import only pyarrow and the standard library at import:\n" + \
        "\n".join(bad)
    upward = [str(e) for e in EDGES if _within(e.module, "catalog") and _ours(e.target)
              and not _within(e.target, "catalog")]
    assert not upward, "catalog is the bottom layer:\n" + "\n".join(upward)


def test_models_are_a_leaf():
    """pipeline.models imports nothing of emoforge but itself and the catalog's contract
    constants, and no heavy library at import (they load inside a backend's factory)."""
    bad = [str(e) for e in EDGES if _within(e.module, "pipeline.models") and _ours(e.target)
           and not (_within(e.target, "pipeline.models") or e.target == "catalog.contract")]
    assert not bad, "pipeline.models must be a leaf:\n" + "\n".join(bad)
    heavy = [str(e) for e in EDGES if _within(e.module, "pipeline.models") and not e.lazy
             and e.target.split(".")[0] in HEAVY]
    assert not heavy, "heavy libraries load inside the backends:\n" + "\n".join(heavy)


def test_ray_only_in_the_runner_and_the_launcher():
    bad = [str(e) for e in EDGES if e.target.split(".")[0] == "ray"
           and not any(_within(e.module, allowed) for allowed in RAY_ALLOWED)
           and not (e.lazy and e.module in RAY_LAZY_ALLOWED)]
    assert not bad, ("Ray is imported by pipeline/run/ and training/launcher.py only:\n"
                     + "\n".join(bad))


def test_stages_use_only_the_contract_their_folder_the_models_media_and_catalog():
    """A stage's folder imports the stage contract, its own folder, the model layer, media and the
    catalog; never another stage's folder, the runner or persons."""
    bad = []
    for e in EDGES:
        if not _within(e.module, "pipeline.stages") or not _ours(e.target):
            continue
        own = ".".join(e.module.split(".")[:3])  # pipeline.stages.<stage>
        if own == "pipeline.stages.registry":  # the table of stages imports each stage's class
            continue
        allowed = (own, "pipeline.stages.contract", "pipeline.models", "pipeline.media", "catalog")
        if not any(_within(e.target, a) for a in allowed):
            bad.append(str(e))
    assert not bad, "stages import the contract, the models, media and catalog only:\n" + \
        "\n".join(bad)


def test_training_uses_only_the_catalog_models_and_media():
    bad = [str(e) for e in EDGES if _within(e.module, "training") and _ours(e.target)
           and not _within(e.target, "training")
           and not any(_within(e.target, allowed) for allowed in TRAINING_MAY_USE)]
    assert not bad, ("training imports only catalog, pipeline.models and pipeline.media (never "
                     "stages, analysis, the runner, staging or plan; never jobs):\n" + "\n".join(bad))


def test_pipeline_never_imports_training_or_jobs():
    bad = [str(e) for e in EDGES if _within(e.module, "pipeline")
           and (_within(e.target, "training") or _within(e.target, "jobs"))]
    assert not bad, "\n".join(bad)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return cycles


def test_no_import_cycles_at_import_time():
    """Module-level imports between emoforge modules form no cycle (a cycle means two modules
    that are not layers of each other)."""
    graph: dict[str, set[str]] = {}
    for e in EDGES:
        if not e.lazy and _ours(e.target) and e.target != e.module:
            graph.setdefault(e.module, set()).add(e.target)
    cycles = _cycles(graph)
    assert not cycles, f"import cycles: {cycles}"


def test_the_model_layer_has_no_circle():
    """Within pipeline.models no two modules import each other, even lazily inside functions
    (a factory imports its backends; backends import shared helpers, never the factory)."""
    graph: dict[str, set[str]] = {}
    for e in EDGES:
        if _within(e.module, "pipeline.models") and _within(e.target, "pipeline.models") \
                and e.target != e.module:
            graph.setdefault(e.module, set()).add(e.target)
    cycles = _cycles(graph)
    assert not cycles, f"circles in the model layer: {cycles}"


@pytest.mark.parametrize("layer,forbidden", [
    ("catalog", ("pandas", "duckdb", "ray", "torch", "cv2", "av", "pipeline", "jobs")),
    ("pipeline.models", ("torch", "onnxruntime", "whisper", "ai_edge_litert", "mediapipe", "dlib",
                         "cv2", "ray", "pipeline.stages", "pipeline.run", "pipeline.persons",
                         "training", "jobs")),
])
def test_importing_a_layer_loads_only_what_it_may(layer, forbidden):
    """Every module of the layer imported in a fresh interpreter: nothing forbidden is loaded
    (pyarrow itself loads numpy)."""
    names = sorted({e.module for e in EDGES if _within(e.module, layer)})
    code = ("import importlib, sys\n"
            f"for name in {names!r}:\n    importlib.import_module(name)\n"
            f"bad = sorted(m for m in sys.modules for f in {forbidden!r} "
            "if m == f or m.startswith(f + '.'))\nprint(','.join(bad))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "", f"importing {layer} loaded {done.stdout.strip()}"
