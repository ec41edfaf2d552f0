"""The package's layering: the stages in order (no module imports a later stage, nor the package
root, nor another module's private names), no import cycles (function-local imports count),
function-local imports of autotune's own modules only where they keep a heavy dependency out,
Optuna's private API only in ``autotune/record/study.py``, and ``import autotune`` light.

Everything here reads the source with :mod:`ast` (no imports), so it is fast and independent of
what is installed.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "autotune"

#: third-party packages that cost real import time or are optional: a function-local import of
#: one of autotune's modules is justified only when it would otherwise pull one of these in
HEAVY = frozenset({
    "optuna", "mlflow", "torch", "torchao", "torch_pruning", "onnx", "onnxruntime", "onnxscript",
    "sklearn", "skopt", "stable_baselines3", "gymnasium", "transformers", "openvino",
    "sqlalchemy", "pandas", "plotly", "fastapi", "starlette", "uvicorn", "envs",
})

# STAGES-BEGIN (written by relayout.py)
#: the stages, bottom first: a module may import its own stage and the ones before it, never a later
#: one (an import for type checkers only does not count: ``measure`` takes a job, it does not load
#: the job stage).  The longest matching prefix places a module; every module has a stage.
STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("vocabulary", ("autotune._version", "autotune.errors", "autotune.core")),
    ("measure", ("autotune.measure",)),
    ("agents", ("autotune.agents", "autotune.envs")),
    ("job", ("autotune.job",)),
    ("record", ("autotune.record",)),
    ("review", ("autotune.review",)),
    ("tuning", ("autotune.tuning",)),
    ("deploy", ("autotune.deploy",)),
    ("retune", ("autotune.retune",)),
    ("top", ("autotune", "autotune.cli", "autotune.api", "autotune.testing")),
)
# STAGES-END

#: imports from an earlier stage to a later one that are tolerated, as (importing module, imported
#: module); at most one: `validate` lists the failure causes an existing study learned (read only
#: when a study file is there, through a function-local import)
ALLOWED_UPWARD: frozenset[tuple[str, str]] = frozenset({("autotune.job.check", "autotune.record.study")})


@dataclass(frozen=True)
class Edge:
    source: str  # importing module
    target: str  # imported module of the package
    line: int
    local: bool  # inside a function
    typing: bool = False  # under ``if TYPE_CHECKING:`` (no runtime import)


def package_modules(root: Path = PACKAGE) -> dict[str, Path]:
    """Dotted module name → file, for every module under ``root`` (following symlinked folders,
    which is how ``autotune/envs`` etc. are shipped)."""
    mods: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        mods[".".join(parts)] = path
    # Path.rglob does not descend into symlinked folders before Python 3.13: walk them too
    for link in root.rglob("*"):
        if link.is_symlink() and link.is_dir():
            for name, path in package_modules(link).items():
                rel = ".".join(link.relative_to(root.parent).parts)
                mods.setdefault(rel + name[len(link.name):], path)
    return mods


def _imports(tree: ast.AST) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement with whether it sits inside a function."""

    def walk(node: ast.AST, in_function: bool) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import | ast.ImportFrom):
                yield child, in_function
            yield from walk(child, in_function or isinstance(
                child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda))

    yield from walk(tree, False)


def _is_type_checking(tree: ast.AST) -> set[int]:
    """Line numbers of imports under ``if TYPE_CHECKING:`` (no runtime cost)."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                for sub in ast.walk(child):
                    if isinstance(sub, ast.Import | ast.ImportFrom):
                        lines.add(sub.lineno)
    return lines


def import_graph(mods: dict[str, Path]) -> tuple[list[Edge], dict[str, set[str]]]:
    """Edges between the package's modules (every import, wherever it is), and for each module
    the third-party top-level names it imports at module level (not under TYPE_CHECKING)."""
    edges: list[Edge] = []
    third: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        typing_only = _is_type_checking(tree)
        for node, local in _imports(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                base = node.module or ""
                if node.level:
                    parts = pkg.split(".")
                    parts = parts[: len(parts) - (node.level - 1)]
                    base = ".".join(parts + ([base] if base else []))
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            hit = False
            targets: set[str] = set()
            for name in names:
                target = name
                while target and target not in mods:
                    target = target.rpartition(".")[0]
                # a module importing its own package (or a name from it) is no cycle
                if target and target != mod and not mod.startswith(target + "."):
                    if target not in targets:
                        edges.append(Edge(mod, target, node.lineno, local,
                                          node.lineno in typing_only))
                    targets.add(target)
                    hit = True
                elif target:
                    hit = True
            if not hit and not local and node.lineno not in typing_only:
                third[mod].update(n.split(".")[0] for n in names[:1] if n)
    return edges, third


def cycles(mods: dict[str, Path], edges: list[Edge]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for e in edges:
        graph[e.source].add(e.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return out


def heavy_closure(mods: dict[str, Path], edges: list[Edge],
                  third: dict[str, set[str]]) -> dict[str, set[str]]:
    """The heavy third-party packages importing each module loads (module-level imports only)."""
    top: dict[str, set[str]] = {m: set() for m in mods}
    for e in edges:
        if not e.local:
            top[e.source].add(e.target)
    out: dict[str, set[str]] = {}

    def closure(m: str) -> set[str]:
        if m in out:
            return out[m]
        out[m] = set()  # (no cycles, but stay finite if there were)
        seen = set(third[m] & HEAVY)
        for t in top[m]:
            seen |= closure(t)
        # importing a submodule imports its packages first
        parent = m.rpartition(".")[0]
        while parent:
            if parent in mods:
                seen |= closure(parent)
            parent = parent.rpartition(".")[0]
        out[m] = seen
        return seen

    for m in mods:
        closure(m)
    return out


@pytest.fixture(scope="module")
def graph() -> tuple[dict[str, Path], list[Edge], dict[str, set[str]]]:
    mods = package_modules()
    edges, third = import_graph(mods)
    return mods, edges, third


def stage_of(mod: str, stages: tuple[tuple[str, tuple[str, ...]], ...] = STAGES) -> int | None:
    """The index of ``mod``'s stage (the longest prefix listed), None if no stage lists it."""
    best: tuple[int, int] | None = None
    for i, (_, prefixes) in enumerate(stages):
        for p in prefixes:
            if (mod == p or mod.startswith(p + ".")) and (best is None or len(p) > best[1]):
                best = (i, len(p))
    return None if best is None else best[0]


def root_imports(mods: dict[str, Path]) -> list[Edge]:
    """Imports of the package root itself (``import autotune``, ``from autotune import
    tune``): the root is the top of the graph (it loads the API), not a place to get names from."""
    root = min(mods, key=len)
    out = []
    for mod, path in mods.items():
        if mod == root:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node, local in _imports(tree):
            if (isinstance(node, ast.Import) and any(a.name == root for a in node.names)) or (
                    isinstance(node, ast.ImportFrom) and node.level == 0 and node.module == root
                    and any(f"{root}.{a.name}" not in mods for a in node.names)):
                out.append(Edge(mod, root, node.lineno, local))
    return out


def stage_violations(mods: dict[str, Path], edges: list[Edge],
                     stages: tuple[tuple[str, tuple[str, ...]], ...] = STAGES,
                     allowed: frozenset[tuple[str, str]] = frozenset()) -> list[str]:
    """Modules no stage lists, and runtime imports from an earlier stage to a later one."""
    names = [name for name, _ in stages]
    bad = [f"{m}: in no stage (add it to STAGES)" for m in mods if stage_of(m, stages) is None]
    for e in edges:
        s, t = stage_of(e.source, stages), stage_of(e.target, stages)
        if s is not None and t is not None and t > s and not e.typing \
                and (e.source, e.target) not in allowed:
            bad.append(f"{e.source}:{e.line} ({names[s]}) imports {e.target} ({names[t]}), a later "
                       "stage")
    return bad


def private_imports(mods: dict[str, Path]) -> list[str]:
    """``from <another module of the package> import _name``."""
    root = min(mods, key=len)
    bad = []
    for mod, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node, _ in _imports(tree):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").split(".")[0]
                                                     == root):
                bad += [f"{mod}:{node.lineno}: from {'.' * node.level}{node.module or ''} import "
                        f"{a.name}" for a in node.names
                        if a.name.startswith("_") and not a.name.startswith("__")]
    return bad


# ---------------------------------------------------------------------------- the checker itself
def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root / "pkg"


def test_a_cycle_through_a_function_local_import_is_found(tmp_path: Path) -> None:
    pkg = _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from pkg.b import f\n",
        "pkg/b.py": "def f():\n    from pkg import c\n",
        "pkg/c.py": "import pkg.a\n",
        "pkg/d.py": "from . import a\nfrom .sub import e\n",
        "pkg/sub/__init__.py": "",
        "pkg/sub/e.py": "from .. import d\n",  # relative, two levels: d <-> sub.e
    })
    mods = package_modules(pkg)
    edges, _ = import_graph(mods)
    assert sorted(cycles(mods, edges)) == [["pkg.a", "pkg.b", "pkg.c"], ["pkg.d", "pkg.sub.e"]]


def test_no_cycle_in_a_layered_package(tmp_path: Path) -> None:
    pkg = _write(tmp_path, {
        "pkg/__init__.py": "from pkg.a import X\n",  # a package re-exporting its module
        "pkg/a.py": "import pkg\nfrom pkg import b\nX = 1\n",
        "pkg/b.py": "import numpy\n",
    })
    mods = package_modules(pkg)
    edges, third = import_graph(mods)
    assert cycles(mods, edges) == []
    assert third["pkg.b"] == {"numpy"}


def test_an_import_of_a_later_stage_is_found_and_type_only_imports_do_not_count(tmp_path) -> None:
    pkg = _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/low.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.high import H\n",
        "pkg/mid/__init__.py": "",
        "pkg/mid/a.py": "from pkg import low\n\ndef f():\n    from pkg.high import b\n",
        "pkg/high/__init__.py": "",
        "pkg/high/b.py": "from pkg.mid import a\nfrom pkg.low import _private\nimport pkg\n",
        "pkg/stray.py": "",
    })
    stages = (("low", ("pkg.low",)), ("mid", ("pkg.mid",)), ("high", ("pkg.high",)),
              ("top", ("pkg",)))
    mods = package_modules(pkg)
    edges, _ = import_graph(mods)
    assert stage_of("pkg.mid.a", stages) == 1 and stage_of("pkg.stray", stages) == 3
    up = ["pkg.mid.a:4 (mid) imports pkg.high (high), a later stage",
          "pkg.mid.a:4 (mid) imports pkg.high.b (high), a later stage"]
    assert stage_violations(mods, edges, stages) == up
    assert stage_violations(mods, edges, stages, frozenset({("pkg.mid.a", "pkg.high.b")})) == up[:1]
    assert stage_violations(mods, edges, stages[:3]) == [
        "pkg: in no stage (add it to STAGES)", "pkg.stray: in no stage (add it to STAGES)", *up]
    assert private_imports(mods) == ["pkg.high.b:2: from pkg.low import _private"]
    assert [(e.source, e.line) for e in root_imports(mods)] == [("pkg.high.b", 3)]


# ---------------------------------------------------------------------------- autotune
def test_autotune_stages_are_in_order(graph) -> None:
    """No module imports a later stage (nor the package root), so the folders show the order a
    job flows in; every module belongs to a stage."""
    mods, edges, _ = graph
    assert len(ALLOWED_UPWARD) <= 1
    bad = stage_violations(mods, edges, STAGES, ALLOWED_UPWARD)
    bad += [f"{e.source}:{e.line} imports the package root (import what it needs from its module; "
            "__version__ from autotune._version)" for e in root_imports(mods)
            if stage_of(e.source) != len(STAGES) - 1]
    assert not bad, "imports against the stage order:\n" + "\n".join(bad)


def test_no_module_imports_another_modules_private_names(graph) -> None:
    mods, _, _ = graph
    bad = private_imports(mods)
    assert not bad, "private names imported across modules (make them public):\n" + "\n".join(bad)


def test_no_import_cycle_in_autotune(graph) -> None:
    mods, edges, _ = graph
    assert len(mods) > 40 and "autotune.tuning.tuner" in mods
    found = cycles(mods, edges)
    lines = []
    for comp in found:
        inside = [e for e in edges if e.source in comp and e.target in comp]
        lines.append(" -> ".join(comp) + "\n    " + "\n    ".join(
            f"{e.source}:{e.line} imports {e.target}{' (in a function)' if e.local else ''}"
            for e in inside))
    assert not found, "import cycles in autotune/:\n" + "\n".join(lines)


def test_function_local_imports_of_autotune_modules_keep_a_heavy_dependency_out(graph) -> None:
    """A module imports the package's modules at the top, unless that would load a heavy or
    optional dependency (optuna, mlflow, torch, ...) it does not load already."""
    mods, edges, third = graph
    heavy = heavy_closure(mods, edges, third)
    bad = []
    for e in edges:
        if e.local and not heavy[e.target] - heavy[e.source]:
            bad.append(f"{mods[e.source].relative_to(PACKAGE.parent)}:{e.line}: {e.target} "
                       "(import it at the top of the module)")
    assert not bad, "function-local imports of light modules:\n" + "\n".join(bad)


def test_optuna_private_api_only_in_the_study_adapter(graph) -> None:
    mods, _, _ = graph
    private_attrs = {"_trial_id", "_study_id", "_storage", "_heartbeat", "_backend", "_cached"}
    bad = []
    for mod, path in mods.items():
        if mod == "autotune.record.study":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "optuna" and (
                    any(p.startswith("_") for p in node.module.split("."))
                    or any(a.name.startswith("_") for a in node.names)):
                bad.append(f"{path.name}:{node.lineno}: from {node.module} import ...")
            elif isinstance(node, ast.Import):
                bad += [f"{path.name}:{node.lineno}: import {a.name}" for a in node.names
                        if a.name.startswith("optuna.") and "._" in a.name]
            elif isinstance(node, ast.Attribute) and (node.attr in private_attrs or (
                    ast.unparse(node).startswith("optuna.") and "._" in ast.unparse(node))):
                bad.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
    assert not bad, "Optuna internals outside autotune/record/study.py:\n" + "\n".join(bad)


def test_import_autotune_is_light() -> None:
    code = ("import sys, autotune, autotune.job.spec, autotune.agents; "
            f"print(sorted(set({sorted(HEAVY)!r}) & {{m.split('.')[0] for m in sys.modules}}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=PACKAGE.parent, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


# ---------------------------------------------------------------------------- the loop's observers
class _Recorder:
    """A loop callback that records what it is told (and reports a problem of its own)."""

    def __init__(self, error: str | None = None) -> None:
        self.events: list[tuple] = []
        self.error = error

    def on_loop_start(self, record, baseline, *, catch_up: bool, finished: bool) -> None:
        self.events.append(("start", catch_up, finished))

    def on_trial_end(self, record, view, views) -> None:
        self.events.append(("trial", view.number, len(views)))

    def on_loop_end(self, record, views, *, new_trials: int) -> None:
        self.events.append(("end", new_trials, len(views)))


def test_the_loop_reports_to_its_callbacks_and_knows_no_mlflow(tmp_path: Path) -> None:
    from autotune.job.spec import load_job
    from autotune.testing.agents import InProcessHarness, tiny_job
    from autotune.tuning import tuner
    from autotune.tuning.loop import LoopCallback

    path = Path(tiny_job("random", tmp_path, 3, "accuracy >= 0").source)
    path.write_text(path.read_text().replace("enabled: false", "enabled: true"))
    job = load_job(path)
    assert job.tracking.enabled
    rec = _Recorder()
    summary = tuner.run(job, harness=InProcessHarness(job), callbacks=[rec])
    # (invalid proposals are recorded but never measured: no trial event, but they are views)
    measured = [t.number for t in summary.trials if t.state in ("complete", "failed")]
    assert len(measured) == 3
    trials = [e for e in rec.events if e[0] == "trial"]
    assert rec.events == [("start", True, False), *trials, ("end", 3, len(summary.trials))]
    assert [e[1] for e in trials] == measured
    assert [e[2] for e in trials] == [n + 1 for n in measured]  # all trials so far, each time
    assert summary.new_trials == 3 and summary.tracking_error is None
    # tracking is enabled, but MLflow is only one of the callbacks: without it nothing is written
    assert not list(job.out_dir.glob("mlflow*")) and not (job.out_dir / "mlartifacts").exists()
    assert [type(cb).__name__ for cb in tuner.default_callbacks(job)] == ["TrackingCallback"]
    assert all(isinstance(cb, LoopCallback) for cb in tuner.default_callbacks(job))

    # the study is finished: the observers hear start and end, and a problem one of them had
    again = _Recorder(error="server down")
    summary = tuner.run(job, harness=InProcessHarness(job), callbacks=[again])
    assert again.events == [("start", True, True), ("end", 0, len(summary.trials))]
    assert summary.new_trials == 0 and summary.tracking_error == "server down"
