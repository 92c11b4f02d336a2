"""The shape of the library code (issue 32): short functions, and wide ones called by keyword.

Read with `ast`, nothing imported: run alone with `pytest --noconftest tests/test_code_shape.py`.
"""
from __future__ import annotations

import ast
from pathlib import Path

PIPELINE = Path(__file__).resolve().parents[1] / "pipeline"
MAX_LINES = 50
MAX_POSITIONAL_PARAMETERS = 5
ESCAPE = "longer than 50 lines because"


def modules() -> list[tuple[str, list[str], ast.Module]]:
    """(path relative to the repository, source lines, tree) of every module under pipeline/."""
    found = []
    for path in sorted(PIPELINE.rglob("*.py")):
        source = path.read_text()
        found.append((str(path.relative_to(PIPELINE.parent)), source.splitlines(), ast.parse(source)))
    return found


def functions(tree: ast.AST):
    return [node for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]


def says_why_it_is_long(function: ast.FunctionDef, lines: list[str]) -> bool:
    """A comment on the line above the `def` (or its decorators), or between the `def` line and the first statement."""
    top = min([function.lineno, *(decorator.lineno for decorator in function.decorator_list)])
    candidates = [top - 1, *range(function.lineno + 1, function.body[0].lineno)]
    return any(0 < number <= len(lines) and lines[number - 1].strip().startswith("#") and ESCAPE in lines[number - 1]
               for number in candidates)


def long_functions() -> list[str]:
    offenders = []
    for path, lines, tree in modules():
        for function in functions(tree):
            length = function.end_lineno - function.lineno + 1
            if length > MAX_LINES and not says_why_it_is_long(function, lines):
                offenders.append(f"{path}:{function.lineno} {function.name}() is {length} lines")
    return offenders


def parameter_count(function: ast.FunctionDef) -> int:
    """Positional-or-keyword plus keyword-only parameters, less a method's self or cls."""
    arguments = function.args
    names = [argument.arg for argument in [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]]
    return len(names) - (1 if names[:1] in (["self"], ["cls"]) else 0)


def is_dataclass(node: ast.ClassDef) -> bool:
    return any("dataclass" in ast.unparse(decorator) for decorator in node.decorator_list)


def signatures(trees: list[ast.Module]) -> list[tuple[str, bool, int]]:
    """(name, called by attribute only, parameter count) of every function and method, and of every class as its
    constructor: its `__init__`, or a dataclass's fields."""
    found = []
    for tree in trees:
        methods = set()
        for node in ast.walk(tree):
            if not isinstance(node, ast.ClassDef):
                continue
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    methods.add(item)
                    if item.name == "__init__":
                        found.append((node.name, False, parameter_count(item)))
            if is_dataclass(node):
                fields = [item for item in node.body if isinstance(item, ast.AnnAssign)
                          and "ClassVar" not in ast.unparse(item.annotation)]
                found.append((node.name, False, len(fields)))
        found += [(function.name, function in methods, parameter_count(function)) for function in functions(tree)]
    return found


def wide_names(trees: list[ast.Module]) -> tuple[set[str], set[str]]:
    """Names that call something with more than five parameters: (as `name(...)`, as `x.name(...)`). A name that
    something narrower also has is left out, since the name alone cannot tell which one a call calls; a method
    is called as `x.name(...)` only."""
    bare: dict[str, set[int]] = {}
    attribute: dict[str, set[int]] = {}
    for name, method, count in signatures(trees):
        attribute.setdefault(name, set()).add(count)
        if not method:
            bare.setdefault(name, set()).add(count)

    def wide(counts: dict[str, set[int]]) -> set[str]:
        return {name for name, seen in counts.items() if min(seen) > MAX_POSITIONAL_PARAMETERS}

    return wide(bare), wide(attribute)


def positional_calls_of_wide_functions() -> list[str]:
    """Calls with positional arguments of a name in `wide_names`; a bare name that the calling module defines itself
    is that function, wide or not."""
    found = modules()
    wide_bare, wide_attribute = wide_names([tree for _, _, tree in found])
    offenders = []
    for path, _, tree in found:
        own = {node.name: parameter_count(node) > MAX_POSITIONAL_PARAMETERS for node in tree.body
               if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}
        for call in ast.walk(tree):
            if not isinstance(call, ast.Call) or not call.args:
                continue
            if isinstance(call.func, ast.Name):
                name = call.func.id
                wide = own[name] if name in own else name in wide_bare
            else:
                name = getattr(call.func, "attr", None)
                wide = name in wide_attribute
            if wide:
                offenders.append((path, call.lineno, f"{name}() with {len(call.args)} positional argument(s)"))
    return [f"{path}:{line} {what}" for path, line, what in sorted(offenders)]


def test_no_function_is_longer_than_50_lines_unless_a_comment_says_why():
    offenders = long_functions()
    assert not offenders, (f"{len(offenders)} function(s) longer than {MAX_LINES} lines with no "
                           f"'# ... {ESCAPE} ...' comment above the def:\n" + "\n".join(offenders))


def test_functions_with_more_than_five_parameters_are_called_by_keyword():
    offenders = positional_calls_of_wide_functions()
    assert not offenders, (f"{len(offenders)} call(s) of a function with more than {MAX_POSITIONAL_PARAMETERS} "
                           "parameters pass arguments by position:\n" + "\n".join(offenders))
