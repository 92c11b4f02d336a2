"""Which source files a stage runs: the module and every `pipeline` module it imports, transitively.

Snakemake cannot see the modules a command imports; listing them as rule inputs makes an edit to any of
them rerun exactly the stages that use it (and what depends on those).
"""
from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


@lru_cache(maxsize=None)
def _imports(module: str) -> frozenset[str]:
    tree = ast.parse((PACKAGE_DIR / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "pipeline":
            if node.module == "pipeline":
                found.update(alias.name for alias in node.names)
            else:
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("pipeline."))
    return frozenset(name for name in found if (PACKAGE_DIR / f"{name}.py").is_file())


def module_files(stage: str) -> list[str]:
    """Paths of `pipeline/<stage>.py`, `pipeline/__init__.py` and every pipeline module it imports."""
    seen, todo = set(), [stage]
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(_imports(module))
    return [str(PACKAGE_DIR / "__init__.py")] + sorted(str(PACKAGE_DIR / f"{m}.py") for m in seen)
