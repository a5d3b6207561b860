"""The package rules that amlpromote/core's docstrings state hold in the code.

Each package under amlpromote/core says what it never imports; this reads every import
statement of every module (module level, inside functions and under TYPE_CHECKING alike, since
a lazy import is still a dependency) with `ast` and checks those statements, so a docstring
cannot drift from the code. It also checks that no two core modules import each other, however
indirectly: the layout was drawn to break the cycles the flat folder had.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[1] / "amlpromote" / "core"
PACKAGES = ("registries", "storage", "azure", "promote", "deploy", "score")
# What each part of core/ never imports, as its docstring says (core/__init__.py for the
# shared ground at the top, and for core/ as a whole).
NEVER = {
    "registries": ("amlpromote.core.promote",),
    "storage": ("amlpromote.core.registries", "amlpromote.core.promote"),
    "azure": ("amlpromote.core.registries", "amlpromote.core.storage", "amlpromote.core.promote",
              "amlpromote.core.deploy"),
    "promote": ("amlpromote.core.deploy", "amlpromote.core.score"),
    "deploy": ("amlpromote.core.promote.promote", "amlpromote.core.promote.check",
               "amlpromote.core.score"),
    "score": ("amlpromote.core.promote.promote", "amlpromote.core.promote.check",
              "amlpromote.core.deploy.rollout"),
    "": ("amlpromote.core.registries", "amlpromote.core.storage", "amlpromote.core.promote",
         "amlpromote.core.deploy", "amlpromote.core.score"),
}
NEVER_ANYWHERE = ("typer", "rich", "amlpromote.cli")


def module_name(path: Path) -> str:
    parts = path.relative_to(CORE.parents[1]).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module `path` imports; `from package import name` counts as `package.name` when
    that is a module of ours, else as `package`."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import"
            assert node.module
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                as_path = CORE.parents[1].joinpath(*candidate.split("."))
                is_module = as_path.with_suffix(".py").exists() or as_path.is_dir()
                found.add(candidate if is_module else node.module)
    return found


MODULES = {module_name(path): path for path in sorted(CORE.rglob("*.py"))}


def part_of(name: str) -> str:
    rest = name.removeprefix("amlpromote.core").lstrip(".").split(".")
    return rest[0] if len(rest) > 1 and rest[0] in PACKAGES else ""


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def test_the_layout_is_what_the_docstrings_describe() -> None:
    for package in PACKAGES:
        init = CORE / package / "__init__.py"
        assert init.exists(), package
        assert ast.get_docstring(ast.parse(init.read_text())), f"{package}/__init__.py"
        assert "Never imports" in init.read_text(), f"{package}/__init__.py names no rule"
    assert len(MODULES) > 20


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_keeps_its_package_rules(name: str) -> None:
    part = part_of(name)
    rule = f"core/{part}/__init__.py" if part else "core/__init__.py"
    for imported in sorted(imports_of(MODULES[name])):
        for banned in NEVER[part] + NEVER_ANYWHERE:
            assert not within(imported, banned), f"{name} imports {imported}; {rule} rules it out"


def test_no_import_cycles_in_core() -> None:
    graph = {name: sorted(i for i in imports_of(path) if i in MODULES and i != name
                          and i != "amlpromote.core" and not i.endswith(tuple(PACKAGES)))
             for name, path in MODULES.items()}
    state: dict[str, str] = {}

    def visit(name: str, trail: list[str]) -> None:
        state[name] = "open"
        for nxt in graph[name]:
            assert state.get(nxt) != "open", "import cycle: " + " -> ".join([*trail, name, nxt])
            if nxt not in state:
                visit(nxt, [*trail, name])
        state[name] = "done"

    for name in graph:
        if name not in state:
            visit(name, [])


CLI = CORE.parent / "cli"


def test_command_modules_never_import_the_app() -> None:
    """cli/app.py imports every command module to register it; a command module that imported
    app.py back would close a cycle (they share cli/runner.py instead)."""
    for path in sorted(CLI.glob("*.py")):
        if path.name in ("app.py", "__init__.py"):
            continue
        found = imports_of(path)
        assert "amlpromote.cli.app" not in found, f"cli/{path.name} imports cli/app.py"


def test_the_local_endpoint_server_stays_small() -> None:
    """The local endpoint server is its own long-lived process: it imports nothing of ours but
    its own package and the scoring contract, so it never reaches a registry or a credential."""
    server = CORE / "deploy" / "local" / "server.py"
    if not server.exists():
        pytest.skip("no local endpoint server yet")
    allowed = ("amlpromote.core.deploy.local", "amlpromote.core.deploy.scoring",
               "amlpromote.core.errors")
    for imported in imports_of(server):
        if within(imported, "amlpromote"):
            assert any(within(imported, a) for a in allowed), f"server.py imports {imported}"
