"""The layering rules, checked on the source, from one table (`LAYERS`, as in
docs/architecture.md): a package imports only packages of lower layers (and itself), there are no
import cycles, and only `tracking/` imports MLflow.

Every import counts: module level, function-local (lazy imports still bind the layers) and
under `if TYPE_CHECKING:` (a cycle hidden there is still a cycle). `benchmarks/` is checked
for cycles too, and nothing in the package imports it.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "histomlf"
BENCHMARKS = REPO / "benchmarks"

LAYERS: tuple[tuple[str, ...], ...] = (
    ("histomlf", "schema", "paths", "memory", "environment", "choices", "errors"),
    ("evaluation", "models", "data", "model_uri"),
    ("config",),
    ("serving", "explain", "training", "stack", "slides"),
    ("tuning", "spark"),
    ("tracking",),
    ("report",),
    ("recipes", "web"),
    ("cli",),
    ("__main__",),
)
"""Bottom to top. A module may import its own package and packages of LOWER layers only
(`histomlf` is the root package's `__init__`, its version). The same table is the one
docs/architecture.md draws; `test_the_docs_list_every_package` keeps them in step."""
LAYER_OF = {package: index for index, layer in enumerate(LAYERS) for package in layer}
BELOW_RECIPES = tuple(p for p, i in LAYER_OF.items() if i < LAYER_OF["recipes"]
                      and p not in ("histomlf", "__main__"))
KNOWN_CYCLES: tuple[tuple[str, ...], ...] = ()
"""Cycles that exist today and have an owner; each must still exist (so fixing one forces
removing its entry) and no other may appear. None now: the tuner table (`tuning/tuner_table`)
and the benchmarks' shared module removed the last two."""


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}
BENCHMARK_MODULES = {_module_name(p): p for p in BENCHMARKS.glob("*.py")}
ALL_MODULES = {**MODULES, **BENCHMARK_MODULES}


def package_of(name: str) -> str:
    """`histomlf.tracking.runs` -> `tracking`; the root package -> `histomlf`."""
    parts = name.split(".")
    return parts[1] if parts[0] == "histomlf" and len(parts) > 1 else parts[0]


def is_package(name: str) -> bool:
    return ALL_MODULES.get(name, Path()).name == "__init__.py"


def defined_names(name: str) -> set[str]:
    """Names a package's `__init__` binds itself (assignments, defs, classes, imports)."""
    tree = ast.parse(ALL_MODULES[name].read_text())
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.ImportFrom | ast.Import):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return names


def type_checking_nodes(tree: ast.AST) -> set[int]:
    """Nodes under `if TYPE_CHECKING:` (counted as imports all the same, but reported apart)."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(child) for stmt in node.body for child in ast.walk(stmt)}
    return skipped


def imports_of(name: str) -> list[tuple[str, int]]:
    """Every module (any package) `name` imports: module level, function-local and under
    `if TYPE_CHECKING:` alike."""
    tree = ast.parse(ALL_MODULES[name].read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                target = f"{node.module}.{alias.name}"
                if target in ALL_MODULES:
                    found.append((target, node.lineno))
                elif not is_package(node.module) or alias.name in defined_names(node.module):
                    found.append((node.module, node.lineno))
    return found


def import_kinds(name: str) -> dict[str, int]:
    """How many of `name`'s imports are module-level, function-local, under TYPE_CHECKING."""
    tree = ast.parse(ALL_MODULES[name].read_text())
    hidden = type_checking_nodes(tree)
    top = {id(n) for n in tree.body}
    counts = {"module": 0, "function": 0, "type_checking": 0}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            kind = ("type_checking" if id(node) in hidden
                    else "module" if id(node) in top else "function")
            counts[kind] += 1
    return counts


def histomlf_edges(modules: dict[str, Path] = MODULES) -> dict[str, set[str]]:
    return {
        name: {target for target, _ in imports_of(name)
               if target in ALL_MODULES and target != name}
        for name in modules
    }


def all_cycles(edges: dict[str, set[str]]) -> set[tuple[str, ...]]:
    """Every strongly connected group of more than one module, as a sorted tuple (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: set[tuple[str, ...]] = set()

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.add(tuple(sorted(group)))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return groups


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_the_cycle_lister_lists_every_cycle() -> None:
    edges = {"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"e"}, "e": {"c"}, "f": {"a"}}
    assert all_cycles(edges) == {("a", "b"), ("c", "d", "e")}


def test_no_import_cycles_in_histomlf_and_benchmarks() -> None:
    """Counting function-local and TYPE_CHECKING imports; only the owned KNOWN_CYCLES."""
    found = all_cycles(histomlf_edges(ALL_MODULES))
    assert found - set(KNOWN_CYCLES) == set(), "new import cycle(s)"
    assert set(KNOWN_CYCLES) - found == set(), "a known cycle is gone: remove its entry"


def test_the_layer_table_names_every_package() -> None:
    packages = {package_of(name) for name in MODULES}
    assert packages - set(LAYER_OF) == set(), "add the package to LAYERS (and the docs)"


def test_each_package_imports_only_lower_layers() -> None:
    offenders = [
        f"{name}:{line} imports {target} ({package_of(target)} is not below "
        f"{package_of(name)})"
        for name in MODULES
        for target, line in imports_of(name)
        if target in MODULES
        and package_of(target) != package_of(name)
        and LAYER_OF[package_of(target)] >= LAYER_OF[package_of(name)]
    ]
    assert offenders == [], "\n".join(offenders)


def test_nothing_in_the_package_imports_benchmarks_or_tests() -> None:
    offenders = [f"{name}:{line}" for name in MODULES for target, line in imports_of(name)
                 if target.split(".")[0] in ("benchmarks", "tests")]
    assert offenders == []


def test_import_counts_see_function_local_and_type_checking_imports() -> None:
    source = PACKAGE / "data" / "scan.py"
    counts = import_kinds(module_name(source))
    assert counts["type_checking"] >= 1 and counts["module"] >= 1
    assert sum(import_kinds(module_name(PACKAGE / "cli" / "train.py")).values()) > 0


def test_only_tracking_imports_mlflow() -> None:
    offenders = [
        f"{name}:{line}"
        for name in MODULES
        if not name.startswith("histomlf.tracking")
        for target, line in imports_of(name)
        if target == "mlflow" or target.startswith("mlflow.")
    ]
    assert offenders == []


@pytest.mark.parametrize("layer", BELOW_RECIPES)
def test_nothing_below_recipes_imports_recipes(layer: str) -> None:
    offenders = [
        f"{name}:{line}"
        for name in MODULES
        if name.startswith(f"histomlf.{layer}")
        for target, line in imports_of(name)
        if target.startswith("histomlf.recipes") or target.startswith("histomlf.cli")
    ]
    assert offenders == []


def test_spark_glue_stays_below_tracking() -> None:
    """`spark/` is plain Spark: the model reaches it only through `tracking/spark_scoring`."""
    offenders = [
        f"{name}:{line}"
        for name in MODULES
        if name.startswith("histomlf.spark")
        for target, line in imports_of(name)
        if target.startswith("histomlf.tracking")
    ]
    assert offenders == []


def test_the_backbone_and_metric_tables_import_without_heavy_libraries() -> None:
    import subprocess
    import sys

    code = (
        "import sys; import histomlf.config, histomlf.models.backbones, "
        "histomlf.evaluation.metrics, histomlf.cli.options; "
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('tensorflow', 'keras', 'mlflow', 'sklearn', 'pandas')); print(heavy)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_the_docs_list_every_package_in_its_layer() -> None:
    """docs/architecture.md's table: `| layer | package(s) | ... |`, the same as `LAYERS`."""
    documented: dict[str, int] = {}
    for line in (REPO / "docs" / "architecture.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0].isdigit():
            for name in re.findall(r"`([\w_]+)/?`", cells[1]):
                documented[name] = int(cells[0])
    assert documented == LAYER_OF
