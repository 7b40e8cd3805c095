"""The package map (README "Design and layout"): which package may import which, and no path tricks.

Imports are read from the source (every `import`/`from` statement, at any depth), so a lazy import inside a function
counts as much as one at the top of a module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.helpers.fixtures import REPO

PACKAGE = REPO / "hs2trl"
# What each part of hs2trl may import (besides itself and the package root). runtime.errors and runtime.cache are
# the floor every part stands on; data reads rows and renders chats; the rest builds on them in this order.
MAY_IMPORT = {
    "runtime": {"data"},
    "data": {"runtime.errors", "runtime.cache"},
    "packing": {"runtime"},
    "trl_internals": {"runtime"},
    "rm": {"data", "runtime", "packing", "trl_internals"},
    "steer": {"rm", "data", "runtime", "packing", "trl_internals"},
    "trainers": {"rm", "steer", "data", "runtime", "packing", "trl_internals"},
    "hub": {"rm", "runtime", "data"},
    "evaluation": {"rm", "steer", "hub", "runtime", "data"},
    "stages": {"rm", "steer", "trainers", "hub", "evaluation", "runtime", "data", "packing", "trl_internals"},
    "cli": {"stages", "rm", "steer", "trainers", "hub", "evaluation", "runtime", "data", "packing", "trl_internals"},
    # old import paths kept for users (aliases of their new modules)
    "rewards": {"rm"}, "scoring": {"rm"}, "steering": {"steer"},
}


def _part(module: str) -> str:
    """`hs2trl.rm.scoring` -> `rm`; the `runtime.errors`/`runtime.cache` floor keeps its module name."""
    parts = module.split(".")[1:]
    if parts[:2] in (["runtime", "errors"], ["runtime", "cache"]):
        return ".".join(parts[:2])
    return parts[0] if parts else ""


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("hs2trl"):
            found |= {f"{node.module}.{a.name}" if node.module == "hs2trl" else node.module for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("hs2trl")}
    return found


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        if module != "hs2trl":
            yield module, path


def test_every_part_imports_only_what_the_map_allows():
    broken = []
    for module, path in _modules():
        own = _part(module).split(".")[0]
        allowed = MAY_IMPORT[own]
        for imported in _imports(path):
            target = _part(imported)
            if target in ("", "__version__") or target.split(".")[0] == own:
                continue
            if target not in allowed and target.split(".")[0] not in allowed:
                broken.append(f"{path.relative_to(REPO)} imports {imported}")
    assert not broken, "\n".join(broken)


def test_no_library_module_imports_the_cli_or_the_stages():
    broken = [f"{path.relative_to(REPO)} imports {imported}" for module, path in _modules()
              if _part(module) not in ("cli", "stages")
              for imported in _imports(path) if _part(imported) in ("cli", "stages")]
    assert not broken, "\n".join(broken)


@pytest.mark.parametrize("folder", ["hs2trl", "tests", "benchmarks"])
def test_no_sys_path_manipulation(folder):
    offenders = [str(p.relative_to(REPO)) for p in sorted((REPO / folder).rglob("*.py"))
                 if p.resolve() != Path(__file__).resolve() and "sys.path" in p.read_text(encoding="utf-8")]
    assert not offenders, offenders


def test_only_a_handful_of_modules_at_the_top_of_the_package():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= 6, top
