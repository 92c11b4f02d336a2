"""Print a Markdown summary of the code layout (folders, stages, imports, long functions, docs).

Run: python tools/layout_summary.py [--root DIR]
"""
import argparse
import ast
from pathlib import Path


def line_count(path):
    return len(path.read_text(encoding="utf-8").splitlines())


def dotted_name(root, path):
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(tree, name, is_package, known):
    """Names in `known` that the module imports, anywhere in its body (lazy imports count too)."""
    package = name if is_package else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in known)
        elif isinstance(node, ast.ImportFrom):
            # A relative import climbs (level - 1) packages up from the module's own package.
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            source = ".".join(base + [node.module] * bool(node.module))
            for alias in node.names:
                # `from pipeline import x` names a submodule when one exists, else an attribute of the package.
                target = f"{source}.{alias.name}"
                found.add(target if target in known else source)
    return found & known


def functions(body, prefix=""):
    """(qualname, length) for every def, methods and nested defs included."""
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            qualname = f"{prefix}{node.name}"
            if not isinstance(node, ast.ClassDef):
                yield qualname, node.end_lineno - node.lineno + 1
            yield from functions(node.body, qualname + ".")
        elif hasattr(node, "body"):
            # Defs under if/try/with blocks still belong to the enclosing scope.
            for field in ("body", "orelse", "finalbody", "handlers"):
                yield from functions(getattr(node, field, []), prefix)


def import_section(title, sources, stages, imports):
    lines = [f"## {title}", ""]
    pairs = [(src, dst) for src in sorted(sources) for dst in sorted(imports[src] & stages) if dst != src]
    lines += [f"- {src} -> {dst}" for src, dst in pairs] or ["none"]
    return lines + [""]


def summary(root):
    paths = sorted((root / "pipeline").rglob("*.py"))
    modules = {dotted_name(root, p): p for p in paths}
    trees = {name: ast.parse(p.read_text(encoding="utf-8"), filename=str(p)) for name, p in modules.items()}
    stages = {
        name for name, tree in trees.items()
        if any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in tree.body)
    }
    imports = {
        name: imported_modules(tree, name, modules[name].name == "__init__.py", set(modules))
        for name, tree in trees.items()
    }

    out = ["# Code layout", "", "## Folders", "", "| folder | modules | lines |", "|---|---:|---:|"]
    folders = sorted({p.parent for p in paths})
    for folder in folders:
        inside = [p for p in paths if p.parent == folder]
        out.append(f"| {folder.relative_to(root)}/ | {len(inside)} | {sum(map(line_count, inside))} |")
    out.append("")

    out += ["## Stages and core", ""]
    for folder in folders:
        names = sorted(n for n, p in modules.items() if p.parent == folder)
        staged = [modules[n].stem for n in names if n in stages]
        # A package's __init__ only marks the folder as a package: neither stage nor core.
        core = [modules[n].stem for n in names if n not in stages and modules[n].name != "__init__.py"]
        for kind, found in (("stages", staged), ("core", core)):
            if found:
                out.append(f"- {folder.relative_to(root)}/ {kind} ({len(found)}): {', '.join(found)}")
    out.append("")

    out += import_section("Stage-to-stage imports", stages, stages, imports)
    out += import_section("Core-to-stage imports", set(modules) - stages, stages, imports)

    lengths = [(length, f"{name}:{qualname}")
               for name, tree in trees.items() for qualname, length in functions(tree.body)]
    out += ["## Longest functions", "", "```"]
    out += [f"{length:5d}  {where}" for length, where in sorted(lengths, key=lambda x: (-x[0], x[1]))[:10]]
    out += ["```", ""]

    out += ["## Other files", "", "| file | lines |", "|---|---:|"]
    others = [root / "README.md", root / "Snakefile", *sorted((root / "rules").glob("*.smk"))]
    out += [f"| {p.relative_to(root)} | {line_count(p)} |" for p in others if p.is_file()]
    out += ["", f"Markdown pages under docs/: {len(list((root / 'docs').rglob('*.md')))}"]
    return "\n".join(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1],
                        help="checkout to summarise (default: the one holding this script)")
    print(summary(parser.parse_args().root.resolve()))


if __name__ == "__main__":
    main()
