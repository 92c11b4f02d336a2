"""Which source files a stage runs: its module and every `pipeline` module it imports, transitively.

Snakemake cannot see the modules a command imports; listing them as rule inputs makes an edit to any of
them rerun exactly the stages that use it (and what depends on those). A `pipeline` import that names no module
under this folder is an error, not a dropped input: a rule whose code list missed a module would not rerun when
that module changed.
"""
from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

PACKAGE = "pipeline"
PACKAGE_DIR = Path(__file__).resolve().parents[1]


class UnknownModule(LookupError):
    """A dotted `pipeline` name with no module file behind it."""


def module_path(dotted: str) -> Path:
    """pipeline.stages.tta -> pipeline/stages/tta.py; a package -> its __init__.py."""
    head, *parts = dotted.split(".")
    base = PACKAGE_DIR.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if head == PACKAGE and candidate.is_file():
            return candidate
    raise UnknownModule(f"{dotted}: no module {base.relative_to(PACKAGE_DIR.parent)}.py or package under {PACKAGE_DIR}")


def is_package(dotted: str) -> bool:
    return module_path(dotted).name == "__init__.py"


def _imported_names(dotted: str) -> set[str]:
    """The dotted `pipeline` modules a module imports anywhere in its body (lazy imports too)."""
    path = module_path(dotted)
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == PACKAGE)
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise UnknownModule(f"{path}: relative import (line {node.lineno}); the pipeline imports by full name")
        elif isinstance(node, ast.ImportFrom) and node.module.split(".")[0] == PACKAGE:
            # From a package, each name is a module (its __init__ holds only a docstring); from a module, attributes.
            if is_package(node.module):
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
            else:
                found.add(node.module)
    return found


@lru_cache(maxsize=None)
def _imports(dotted: str) -> frozenset[str]:
    names = _imported_names(dotted)
    for name in names:
        module_path(name)  # raises on a name with no module
    return frozenset(names)


def _packages_of(dotted: str) -> list[str]:
    """The packages Python imports before a module: pipeline, pipeline.stages, ..."""
    parts = dotted.split(".")
    return [".".join(parts[:end]) for end in range(1, len(parts))]


def module_files(module: str) -> list[str]:
    """Paths of the module (e.g. "pipeline.stages.tta"), its packages' __init__.py and every module it imports."""
    seen, todo = set(), [module]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(_imports(name))
            seen.update(_packages_of(name))
    return sorted(str(module_path(name)) for name in seen)
