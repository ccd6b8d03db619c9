"""The package's layout, read from the source with ``ast`` (docs/ARCHITECTURE.md): no import circle
inside crs_fast, imports only down the layers, no module over 400 lines, and one file family per
op named after it in every place an op lives."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PKG = ROOT / "crs_fast"
MAX_LINES = 400

# Public op families: the module named after the family holds these ops.
FAMILIES = {
    "gae": ("gae", "masked_whiten", "reinforce_returns", "group_advantages"),
    "kl_penalty": ("kl_penalty",),
    "token_rewards": ("token_rewards",),
    "ppo_loss": ("ppo_policy_loss", "ppo_value_loss"),
    "token_logprobs": ("token_logprobs",),
    "linear_logprobs": ("linear_logprobs",),
    "topk_scores": ("topk_scores",),
}

# crs_fast.crs.rlhf's layers, top to bottom: a module imports only from earlier layers.
RLHF_LAYERS = [
    {"config", "lm", "encoder", "collab", "mention", "cues", "people"},
    {"corpus", "baselines"},
    {"policy", "reward", "neighbours"},
    {"build"},
    {"sft", "rollout"},
    {"anchor"},
    {"online_rm", "ppo", "evaluate"},
    {"item_fit"},
    {"run_io", "compare"},
    {"report"},
    {"eval_stage"},
    {"stages"},
    {"cli", "analysis", "ddp_check"},
]


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PKG.rglob("*.py")}


def is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def resolve(current: str, level: int, module: str | None) -> str:
    """The absolute name of a relative import's base module."""
    if level == 0:
        return module or ""
    base = current.split(".") if is_package(current) else current.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def imports(name: str) -> set[str]:
    """crs_fast modules ``name`` imports anywhere in its source (function-level imports too). An
    import of a package that contains ``name`` is not counted: Python initialises it first anyway."""
    tree = ast.parse(MODULES[name].read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = resolve(name, node.level, node.module)
            subs = {f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES}
            found |= subs
            if len(subs) < len(node.names):
                found.add(base)
    return {m for m in found if m in MODULES and m != name and not name.startswith(m + ".")}


GRAPH = {name: imports(name) for name in MODULES}


def test_the_source_tree_is_read():
    assert {"crs_fast.ops.gae", "crs_fast.kernels.triton.gae", "crs_fast.crs.rlhf.stages"} <= set(MODULES)
    assert "crs_fast.ops.reference" in GRAPH["crs_fast.ops.gae"]
    assert "crs_fast.crs.rlhf.config" in GRAPH["crs_fast.crs.rlhf.stages"]


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circle():
    assert not circles(GRAPH), f"import circles: {circles(GRAPH)}"


def test_the_detector_sees_a_circle():
    """The check above could fail: a made-up import of an op from the kernels closes a circle."""
    graph = {k: set(v) for k, v in GRAPH.items()}
    graph["crs_fast.kernels._rows"].add("crs_fast.ops.gae")
    assert any({"crs_fast.kernels._rows", "crs_fast.ops.gae"} <= set(c) for c in circles(graph))


def test_layers():
    for name, deps in GRAPH.items():
        if name.startswith("crs_fast.kernels") or name == "crs_fast._native":
            bad = {d for d in deps if d.startswith("crs_fast.ops") or d.startswith("crs_fast.crs")}
            assert not bad, f"{name} imports {bad}: kernels sit below the ops"
        if name.startswith("crs_fast.ops"):
            assert not {d for d in deps if d.startswith("crs_fast.crs")}, name
        if name.startswith("crs_fast.crs.data"):
            assert not {d for d in deps if d.startswith("crs_fast.crs.rlhf")}, f"{name}: data sits below rlhf"
    assert GRAPH["crs_fast._native"] == set(), "the compiled module's conventions are a leaf"


def test_rlhf_imports_go_down_the_layers():
    layer = {m: i for i, group in enumerate(RLHF_LAYERS) for m in group}
    rlhf = {n.rsplit(".", 1)[1] for n in MODULES if n.startswith("crs_fast.crs.rlhf.")}
    assert rlhf == set(layer), f"modules without a layer: {rlhf ^ set(layer)}"
    for m in rlhf:
        for dep in GRAPH[f"crs_fast.crs.rlhf.{m}"]:
            if dep.startswith("crs_fast.crs.rlhf."):
                d = dep.rsplit(".", 1)[1]
                assert layer[d] < layer[m], f"rlhf.{m} (layer {layer[m]}) imports rlhf.{d} (layer {layer[d]})"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_over_400_lines(name):
    n = len(MODULES[name].read_text().splitlines())
    assert n <= MAX_LINES, f"{MODULES[name].relative_to(ROOT)} has {n} lines"


def test_one_file_family_per_op():
    import crs_fast.ops as ops
    from crs_fast.benchmarks.cases import BUILDERS
    from crs_fast.kernels import LAUNCHERS

    public = {n for n in ops.__all__ if callable(getattr(ops, n)) and not isinstance(getattr(ops, n), type)}
    in_families = [op for members in FAMILIES.values() for op in members]
    assert sorted(in_families) == sorted(public), "every public op belongs to exactly one family"
    for family, members in FAMILIES.items():
        assert (PKG / "ops" / f"{family}.py").is_file(), f"crs_fast/ops/{family}.py"
        for op in members:
            assert getattr(ops, op).__module__ == f"crs_fast.ops.{family}", op
        assert (ROOT / "tests" / "ops" / f"test_{family}.py").is_file(), f"tests/ops/test_{family}.py"
        if (ROOT / "csrc" / family).exists():
            assert (ROOT / "csrc" / family / f"{family}.cpp").is_file()
    for op, by_backend in LAUNCHERS.items():
        family = next(f for f, members in FAMILIES.items() if op in members)
        for backend, module in by_backend.items():
            assert module == f"crs_fast.kernels.{backend}.{family}", (op, backend, module)
            assert module in MODULES, module
        if "cuda" in by_backend:
            assert (ROOT / "csrc" / family / f"{family}_cuda.cu").is_file(), op
        assert (ROOT / "bench" / f"bench_{op}.py").is_file(), f"bench/bench_{op}.py"
        assert BUILDERS[op][0].__module__.rsplit(".", 1)[1] == family, f"benchmark cases of {op}"
    assert not [p.name for p in (ROOT / "csrc").iterdir() if p.is_dir() and p.name not in FAMILIES]


def test_bench_does_not_import_tests():
    for path in (ROOT / "bench").glob("*.py"):
        text = path.read_text()
        assert '"tests"' not in text and "from frameworks" not in text, path.name


def test_readme_order_length_and_links():
    import re

    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 300, "README.md: at most ~300 lines; details go to docs/"
    headings = [line[3:] for line in text.splitlines() if line.startswith("## ")]
    order = ["Quick start", "Layout", "Ops and backends", "Drop-in", "The recommender", "Data", "Tests", "Performance"]
    positions = [next(i for i, h in enumerate(headings) if h.startswith(o)) for o in order]
    assert positions == sorted(positions), headings
    assert not re.search(r"`[0-9a-f]{7,40}`", text), "no commit hashes in the README"
    architecture = ROOT / "docs" / "ARCHITECTURE.md"
    assert len(architecture.read_text().splitlines()) <= 150
    for doc in [ROOT / "README.md", *(ROOT / "docs").rglob("*.md")]:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", doc.read_text()):
            assert (doc.parent / target).exists(), f"{doc.relative_to(ROOT)} links to a missing {target}"
