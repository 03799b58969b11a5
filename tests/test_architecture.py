"""The layering rules, checked on the source: no import cycles, MLflow only in tracking/."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "histomlf"
BELOW_RECIPES = (
    "data", "training", "tuning", "evaluation", "models", "tracking", "serving", "slides",
    "spark",
)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def is_package(name: str) -> bool:
    return MODULES.get(name, Path()).name == "__init__.py"


def defined_names(name: str) -> set[str]:
    """Names a package's `__init__` binds itself (assignments, defs, classes, imports)."""
    tree = ast.parse(MODULES[name].read_text())
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
    """Nodes under `if TYPE_CHECKING:` (never executed, so not an import edge)."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(child) for stmt in node.body for child in ast.walk(stmt)}
    return skipped


def imports_of(name: str) -> list[tuple[str, int]]:
    """Every module (any package) `name` imports, function-local imports included."""
    tree = ast.parse(MODULES[name].read_text())
    skipped = type_checking_nodes(tree)
    found = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                target = f"{node.module}.{alias.name}"
                if target in MODULES:
                    found.append((target, node.lineno))
                elif not is_package(node.module) or alias.name in defined_names(node.module):
                    found.append((node.module, node.lineno))
    return found


def histomlf_edges() -> dict[str, set[str]]:
    return {
        name: {target for target, _ in imports_of(name) if target in MODULES and target != name}
        for name in MODULES
    }


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


def test_no_import_cycles_in_histomlf() -> None:
    cycle = find_cycle(histomlf_edges())
    assert cycle is None, " -> ".join(cycle)


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
