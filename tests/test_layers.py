"""The import graph keeps the layers (README, "Layers"): each module imports only its own layer
or lower ones, nothing below the app imports it, and no import cycle exists. Imports are read
from the source with ``ast``, wherever they stand: inside a function or under TYPE_CHECKING an
import is a dependency all the same."""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("engine", "prompts", "budgets", "state")

# The shared vocabulary: leaf modules in engine/ that import nothing of m2l but each other.
# ``engine`` itself is here because importing any ``engine.*`` module runs engine/__init__.py.
VOCABULARY = frozenset(
    {
        "engine",
        "engine._typed_toml",
        "engine.capabilities",
        "engine.chat",
        "engine.clock",
        "engine.config",
        "engine.errors",
        "engine.events",
        "engine.formats",
        "engine.headers",
        "engine.lazy",
        "engine.modelprofile",
        "engine.records",
        "engine.simsettings",
        "engine.tokens",
        "engine.version",
    }
)

# Lowest first: a module may import modules of its own layer or of a lower one.
LAYERS = ("vocabulary", "prompts", "state", "budgets", "engine", "app")


def layer_of(module: str) -> str:
    """The layer a module of m2l belongs to."""
    if module in VOCABULARY:
        return "vocabulary"
    top = module.split(".")[0]
    if top == "engine":
        return "app" if module == "engine.app" or module.startswith("engine.app.") else "engine"
    return top


@dataclass(frozen=True, slots=True)
class Import:
    source: str
    target: str
    line: int


def module_files(root: Path, packages: Iterable[str]) -> dict[str, Path]:
    """Every module of the packages under ``root``, by dotted name (a package by its own name)."""
    found = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _absolute(module: str | None, level: int, source: str, is_package: bool) -> str:
    if not level:
        return module or ""
    base = source.split(".") if is_package else source.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, module] if module else base)


def imports_of(name: str, path: Path, modules: Mapping[str, Path]) -> list[Import]:
    """Every import of one of ``modules`` in the file, at any depth (functions included)."""
    tops = {m.split(".")[0] for m in modules}
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node.module, node.level, name, is_package)
            # ``from pkg import sub`` imports the submodule; ``from pkg import name``, the package.
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                for alias in node.names
            ]
        for target in targets:
            if target.split(".")[0] not in tops:
                continue
            # ``import a.b.c`` of a name that is not a module stops at its longest module prefix.
            while target not in modules and "." in target:
                target = target.rsplit(".", 1)[0]
            if target in modules and target != name:
                found.append(Import(name, target, node.lineno))
    return found


def import_graph(root: Path, packages: Iterable[str]) -> list[Import]:
    modules = module_files(root, packages)
    return [imp for name, path in modules.items() for imp in imports_of(name, path, modules)]


def _parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def layer_violations(
    graph: Iterable[Import], layer: Callable[[str], str], order: tuple[str, ...]
) -> list[str]:
    """Each import of a higher layer, as ``source -> target (line N): layer -> layer``.

    Importing ``a.b.c`` runs ``a`` and ``a.b`` first, so those packages count as imported too.
    """
    rank = {name: i for i, name in enumerate(order)}
    out = []
    for imp in graph:
        for target in (*_parents(imp.target), imp.target):
            if target == imp.source or imp.source.startswith(target + "."):
                continue  # a module's own packages run before it anyway
            src, dst = layer(imp.source), layer(target)
            if rank[dst] > rank[src]:
                out.append(f"{imp.source} -> {target} (line {imp.line}): {src} imports {dst}")
    return sorted(set(out))


def import_cycles(graph: Iterable[Import]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    edges: dict[str, set[str]] = {}
    for imp in graph:
        edges.setdefault(imp.source, set()).add(imp.target)
        edges.setdefault(imp.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return sorted(cycles)


# --- the checks on m2l itself -------------------------------------------------------------------


def test_every_import_keeps_to_its_layer() -> None:
    """No module imports a layer above its own: vocabulary < prompts < state < budgets < engine
    < app; in particular nothing below the app imports ``engine.app``."""
    violations = layer_violations(import_graph(ROOT, PACKAGES), layer_of, LAYERS)
    assert violations == [], "imports that break the layers:\n" + "\n".join(violations)


def test_there_is_no_import_cycle() -> None:
    """No set of modules imports itself round in a circle, lazily or not."""
    cycles = import_cycles(import_graph(ROOT, PACKAGES))
    assert cycles == [], "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_vocabulary_exists() -> None:
    """Every vocabulary module named here is a real module (a rename cannot empty the check)."""
    modules = module_files(ROOT, PACKAGES)
    assert modules.keys() >= VOCABULARY
    assert any(layer_of(m) == "app" for m in modules)


# --- the checks on the checker ------------------------------------------------------------------


def _tree(root: Path, files: Mapping[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


FAKE = {
    "engine/__init__.py": "",
    "engine/errors.py": "",
    "engine/scheduler.py": "from engine.errors import X\n",
    "engine/app/__init__.py": "",
    "engine/app/cli.py": "import state.store\n",
    "state/__init__.py": "",
    "state/store.py": "from engine.errors import X\n",
}


def _fake_layer(module: str) -> str:
    return "vocabulary" if module in ("engine", "engine.errors") else layer_of(module)


def test_a_function_level_import_is_a_violation(tmp_path: Path) -> None:
    """An import inside a function (the way a lazy import hides a dependency) is caught."""
    _tree(
        tmp_path,
        {
            **FAKE,
            "state/store.py": (
                "from engine.errors import X\n\n"
                "def later():\n    from engine.scheduler import Scheduler\n    return Scheduler\n"
            ),
        },
    )
    graph = import_graph(tmp_path, ("engine", "state"))
    assert layer_violations(graph, _fake_layer, LAYERS) == [
        "state.store -> engine.scheduler (line 4): state imports engine"
    ]


def test_importing_the_app_from_below_is_a_violation(tmp_path: Path) -> None:
    """``from engine.app import cli`` in the engine layer is caught, as is a package's own
    ``__init__`` importing a higher layer (it runs whenever any of its modules is imported)."""
    _tree(
        tmp_path,
        {
            **FAKE,
            "engine/scheduler.py": "from engine.app import cli\n",
            "engine/__init__.py": "from engine import scheduler\n",
        },
    )
    graph = import_graph(tmp_path, ("engine", "state"))
    assert layer_violations(graph, _fake_layer, LAYERS) == [
        "engine -> engine.scheduler (line 1): vocabulary imports engine",
        "engine.scheduler -> engine.app (line 1): engine imports app",
        "engine.scheduler -> engine.app.cli (line 1): engine imports app",
    ]


def test_a_lazy_cycle_is_a_cycle(tmp_path: Path) -> None:
    """Two modules importing each other, one of them inside a function, form a cycle."""
    _tree(
        tmp_path,
        {
            **FAKE,
            "engine/errors.py": "def f():\n    import engine.scheduler\n",
        },
    )
    graph = import_graph(tmp_path, ("engine", "state"))
    assert import_cycles(graph) == [["engine.errors", "engine.scheduler"]]
    assert import_cycles(import_graph(tmp_path / "none", ())) == []
