"""The shape of the code: no import cycle, results readable without torch, the README's stage table true to the
stages' declarations, `emrobust --help` naming the verbs."""
from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, fake_cell
from emrobust.core import keys
from emrobust.engine import pipeline
from emrobust.stages import ORDER

PACKAGES = ("emrobust", "analysis")


def _module_of(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports, top-level and inside functions alike. A package's __init__
    importing its own submodules is containment, not a dependency (importing the child runs the parent)."""
    files = {_module_of(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for mod, path in files.items():
        is_pkg = path.name == "__init__.py"
        here = mod if is_pkg else mod.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = here.split(".")[: len(here.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for n in names:
                while n and n not in files:
                    n = n.rpartition(".")[0]
                if n and n != mod and not (is_pkg and n.startswith(mod + ".")):
                    deps.add(n)
        graph[mod] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle():
    g = import_graph()
    assert "emrobust.engine.pipeline" in g and "emrobust.cli" in g
    assert not cycles(g), cycles(g)


# The rooms of the package from the bottom floor up (the README's Layout lists them top down): a module imports only
# modules of its own room or of rooms below it, function-level imports included.
ROOMS = ("emrobust", "emrobust.errors", "emrobust.data", "emrobust.config", "emrobust.core", "emrobust.generation",
         "emrobust.judges", "emrobust.measures", "emrobust.train", "emrobust.stages", "emrobust.engine",
         "emrobust.analysis", "emrobust.sweeps", "emrobust.cli", "analysis")
# the imports that still reach up a floor, each inside the one function that needs it, and why
REACHES_UP = {
    ("emrobust.measures.calibration", "emrobust.analysis.imports"):
        "`judge calibrate reference=import:...` reads published scores with the report's importer",
    ("emrobust.measures.persona_classifier", "emrobust.train.diversity"):
        "the classifier embeds answers with the embedder that measures question diversity",
    ("emrobust.measures.probe", "emrobust.train.training"):
        "the probe tokenizes a chat exactly as training does (training.tokenize_chat)",
    ("emrobust.train.defenses", "emrobust.stages.directions"):
        "steering and early stopping read the directions stage's artifact (directions.load)",
}


def room(module: str) -> str:
    return next(r for r in sorted(ROOMS, key=len, reverse=True) if module == r or module.startswith(r + "."))


def test_rooms_are_layered():
    """Every import runs down the floors of ROOMS (or stays in its room), except the few declared in REACHES_UP."""
    g = import_graph()
    assert {room(m) for m in g} == set(ROOMS), {room(m) for m in g} ^ set(ROOMS)
    floor = {r: i for i, r in enumerate(ROOMS)}
    up = {(a, b) for a, deps in g.items() for b in deps if floor[room(b)] > floor[room(a)]
          and not any(c.startswith(b + ".") for c in deps)}  # `from pkg import mod`: the arrow is to mod
    assert up == set(REACHES_UP), up ^ set(REACHES_UP)
    flat = sorted(p.name for p in (ROOT / "emrobust").glob("*.py"))
    assert flat == ["__init__.py", "cli.py", "errors.py"], flat  # every other module sits in a room named for its role


# ---------------------------------------------------------------- function-level imports
# Packages that take 0.5-5 s to import (measured with `python -X importtime -c "import <package>"`) and are needed only
# inside the functions that load, train, score, plot or log: validation, planning, a cached rerun and a one-line error
# never pay for them ("slow import": one of these, or a project module that imports one at its top).
SLOW = {"torch", "transformers", "peft", "trl", "accelerate", "datasets", "steering_vectors", "lm_eval", "sklearn",
        "scipy", "matplotlib", "wandb", "wandb_workspaces"}
# and these too, in a module that a torch-free verb imports ("torch-free verbs")
HEAVY = SLOW | {"pandas", "safetensors", "pyarrow"}
OPTIONAL = {"vllm", "openai", "deepspeed", "easy_dataset_share"}  # extras a plain install lacks ("optional extra")
# the modules of the verbs that run without torch (test_verbs_that_only_read_run_without_torch), and the analysis
# entry points; `emrobust.cli` imports each verb's module when that verb runs ("per verb")
VERBS = ("emrobust.cli", "emrobust.analysis.report", "emrobust.data.cli", "emrobust.sweeps.rescore",
         "emrobust.sweeps.status", "emrobust.sweeps.sweep", "emrobust.measures.judge_cli", "analysis.report",
         "analysis.diversity_table")
REASONS = ("slow import", "torch-free verbs", "optional extra", "per verb", "backend", "up a floor")


def _imports() -> tuple[dict[str, set[str]], list[tuple[str, Path, ast.AST, list[str], ast.AST]]]:
    """(module -> what it imports at module level: project modules and third-party top names; the function-level
    imports as (module, file, import node, what it names, the statement list holding it))."""
    files = {_module_of(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}

    def targets(mod, path, node) -> list[str]:
        here = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            base = node.module or ""
            if node.level:
                base = ".".join(here.split(".")[: len(here.split(".")) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        out = set()
        for n in names:
            m = n
            while m and m not in files:
                m = m.rpartition(".")[0]
            out.add(m if m else n.split(".")[0]) if m or not n.startswith(PACKAGES) else None
        return sorted(o for o in out if not any(x.startswith(o + ".") for x in out))  # `from pkg import mod`: mod

    top, inner = {}, []
    for mod, path in files.items():
        tree = ast.parse(path.read_text())
        top[mod] = set()

        def visit(node, in_def, body_of):
            for field in ("body", "orelse", "finalbody", "handlers"):
                for child in getattr(node, field, []) or []:
                    if isinstance(child, (ast.Import, ast.ImportFrom)):
                        if in_def:
                            inner.append((mod, path, child, targets(mod, path, child), getattr(node, field)))
                        else:
                            top[mod].update(targets(mod, path, child))
                    visit(child, in_def or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)), child)
        visit(tree, False, tree)
    return top, inner


def function_level_imports() -> tuple[list[tuple[str, Path, ast.AST, set, list]], set[str]]:
    """Every function-level import as (module, file, node, its reasons (None: none, it could sit at the top), the
    statement list holding it); and the modules a torch-free verb imports."""
    top, inner = _imports()

    def parents(m):
        return {".".join(m.split(".")[:i]) for i in range(1, m.count(".") + 1)} & set(top)

    def reach(m, seen=None):  # what importing m imports (module-level imports, and m's parent packages)
        seen = set() if seen is None else seen
        for d in top.get(m, set()) | parents(m):
            if d not in seen:
                seen.add(d)
                reach(d, seen)
        return seen

    light = set(VERBS).union(*(reach(v) & set(top) for v in VERBS))

    def reason(mod, x) -> str | None:
        root = x.split(".")[0]
        if root in OPTIONAL:
            return "optional extra"
        if root in SLOW or reach(x) & SLOW:
            return "slow import"
        if (mod, x) in REACHES_UP:
            return "up a floor"
        if mod == "emrobust.cli" and x in VERBS:
            return "per verb"
        if x in top and x.startswith(mod + ".") and mod in reach(x):
            return "backend"  # a package loads the backend module a config picks (the module imports its package)
        if x in top[mod]:
            return None  # at the top already
        if mod in light and (root in HEAVY or reach(x) & HEAVY):
            return "torch-free verbs"
        return None

    return [(mod, path, node, {reason(mod, x) for x in xs}, body) for mod, path, node, xs, body in inner], light


def test_function_level_imports_have_a_reason_and_say_it():
    """An import inside a function stays there only for a reason of REASONS, and says it in a `# lazy: <reason>`
    comment on its line or on the line above its run of imports. The reason is worked out here, not read from the
    comment: an import that could move to the top of its module without bringing a slow package into every process
    that imports the module, or torch into a torch-free verb (and is no optional extra, per-verb, backend or up-a-floor
    import), fails, naming its line."""
    inner, _ = function_level_imports()
    hoistable, unsaid = [], []
    for _, path, node, why, body in inner:
        where = f"{path.relative_to(ROOT)}:{node.lineno}"
        if None in why:
            hoistable.append(f"{where} {ast.unparse(node)}")
            continue
        lines = path.read_text().splitlines()
        i = body.index(node)
        while i > 0 and isinstance(body[i - 1], (ast.Import, ast.ImportFrom)):
            i -= 1
        said = " ".join(lines[body[i].lineno - 2: node.end_lineno])
        if not any(f"# lazy: {w}" in said for w in why):
            unsaid.append(f"{where} {ast.unparse(node)}  # lazy: {' / '.join(sorted(why))}")
    assert not hoistable, "could be imported at the top of the module:\n" + "\n".join(hoistable)
    assert not unsaid, "say why (`# lazy: <reason>`):\n" + "\n".join(unsaid)
    assert len(inner) <= 140, len(inner)  # 333 before the imports without a reason moved up


def test_results_and_cli_entry_import_neither_torch_nor_stages():
    """What analysis reads from (results, metrics) and the CLI entry are leaves of the heavy part of the graph."""
    g = import_graph()

    def reach(m, seen=None):
        seen = set() if seen is None else seen
        for d in g.get(m, ()):
            if d not in seen:
                seen.add(d)
                reach(d, seen)
        return seen

    for leaf in ("emrobust.core.results", "emrobust.measures.metrics", "emrobust.core.compose"):
        assert not {d for d in reach(leaf) if d.startswith("emrobust.stages") or d == "emrobust.engine.pipeline"}, leaf
    src = (ROOT / "emrobust" / "core" / "results.py").read_text()
    imported = {n.names[0].name.split(".")[0] if isinstance(n, ast.Import) else (n.module or "").split(".")[0]
                for n in ast.walk(ast.parse(src)) if isinstance(n, (ast.Import, ast.ImportFrom))}
    assert imported <= {"__future__", "fcntl", "json", "math", "contextlib", "pathlib", "pandas", "numpy"}, imported


# torch made unimportable. (Not `sys.modules["torch"] = None`: scipy's array-API shim reads sys.modules["torch"]
# when the key is there and fails on None; a finder that refuses the import is what a machine without torch does.)
NO_TORCH = """
import sys


class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
        return None


sys.meta_path.insert(0, NoTorch())
from emrobust.cli import main
try:
    main(sys.argv[1:])
except SystemExit as e:
    print("exit", e.code)
    sys.exit(e.code)
"""


@pytest.mark.parametrize("argv", [["--help"], ["rescore", "--help"], ["data", "list"], ["data", "verify"],
                                  ["analyze", "{sweep}", "--n-resamples", "50"], ["sweep", "--help"]])
def test_verbs_that_only_read_run_without_torch(argv, tmp_path):
    sweep = tmp_path / "sweep"
    for i, seed in enumerate((0, 1)):
        fake_cell(sweep, i, seed, [10, 80, 90, 70], [90] * 4)
    args = [a.format(sweep=sweep) for a in argv]
    env = {**os.environ, "MPLBACKEND": "Agg"}
    p = subprocess.run([sys.executable, "-c", NO_TORCH, *args], capture_output=True, text=True, cwd=tmp_path, env=env,
                       timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    assert "blocked by the test" not in p.stdout + p.stderr
    if argv == ["--help"]:
        for verb in ("sweep", "analyze", "rescore", "data"):
            assert re.search(rf"^\s+{verb}\s", p.stdout, re.M), p.stdout
    if argv[0] == "analyze":
        assert (sweep / "report.md").exists() and (sweep / "sweep.csv").exists()


def test_readme_stage_table_names_what_each_stage_reads():
    """The README's stage table has a `reads` column; it lists exactly the config paths each stage declares."""
    text = (ROOT / "README.md").read_text()
    table = text[text.index("| stage | reads |"):]
    rows = {}
    for line in table.splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0].strip("`")] = set(re.findall(r"`([a-z_.]+)`", cells[1]))
    assert list(rows) == list(ORDER)
    for stage, listed in rows.items():
        declared = set(keys.read_paths(pipeline.stage_module(stage)))
        assert listed == declared, (stage, listed ^ declared)


def test_the_run_loop_names_no_stage():
    """run_cell (and the node runner) ask a stage only what the protocol declares (emrobust.stages.PROTOCOL):
    no stage name is written in them; each module's answers are its own declarations or the defaults."""
    from emrobust import stages

    names = {*ORDER, "base"}
    src = ast.parse((ROOT / "emrobust" / "engine" / "pipeline.py").read_text())
    for fn in (n for n in src.body if isinstance(n, ast.FunctionDef) and n.name in ("run_cell", "_run_node")):
        said = {c.value for c in ast.walk(fn) if isinstance(c, ast.Constant) and isinstance(c.value, str)}
        assert not said & names, (fn.name, said & names)
    spec = {s: stages.spec(pipeline.stage_module(s)) for s in names}
    assert {s for s, x in spec.items() if not x.seeded} == {"base", "classifier"}
    assert {s for s, x in spec.items() if x.distributed} == {"distill", "introspect", "em"}
    assert {s for s, x in spec.items() if x.place} == {"base"} and {s for s, x in spec.items() if x.measures} == \
        {"evaluate"}
    assert {s for s, x in spec.items() if x.record is stages.record_diversity} == {"questions", "distill"}
    assert {s for s, x in spec.items() if x.accept} == {"questions", "distill", "introspect", "em"}


def test_a_new_stage_is_a_module_and_its_node(tmp_path, monkeypatch):
    """A toy stage declared here alone (its reads, version, protocol answers, run) runs under the unchanged engine
    once its node is in the cell's graph: built into the store under its key, recorded, and reused on a rerun."""
    import types

    from conftest import compose

    toy = types.ModuleType("emrobust.stages.toy")
    toy.VERSION, toy.READS, toy.SEEDED = 1, ("eval.max_new_tokens",), False
    toy.run = lambda ctx: (ctx.out / "toy.txt").write_text(f"{ctx.cfg.eval.max_new_tokens} {ctx.inputs['start']}") \
        and {"data": {"rows": 1}}
    monkeypatch.setitem(sys.modules, "emrobust.stages.toy", toy)
    monkeypatch.setattr(pipeline, "graph", lambda cfg: [pipeline.Node("base", "base"),
                                                       pipeline.Node("toy", "toy", {"start": "base"})])
    cfg = compose("debug=tiny", "trait=none", "em_dataset=none", tmp=tmp_path)
    first = pipeline.run_cell(cfg, tmp_path / "a")
    (row,) = [s for s in first["stages"] if s["name"] == "toy"]
    assert row["status"] == "executed" and first["training"] == {"toy": {"rows": 1}} and first["status"] == "ok"
    assert (Path(row["artifact"]) / "toy.txt").read_text().startswith(str(cfg.eval.max_new_tokens))
    cfg.seed = cfg.seed + 1  # SEEDED = False: another seed reuses it
    again = pipeline.run_cell(cfg, tmp_path / "b")
    assert [s["status"] for s in again["stages"] if s["name"] == "toy"] == ["cached"]
