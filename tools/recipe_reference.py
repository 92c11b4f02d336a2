"""Write docs/recipe-reference.md from config/schema.yaml: every recipe key with its type, default and description.

    .venv/bin/python tools/recipe_reference.py           # rewrite docs/recipe-reference.md
    .venv/bin/python tools/recipe_reference.py --check   # exit 1 if the committed page is out of date

A key's path is dotted (`model.weights`); `[]` stands for each item of a list (`finetune[].snapshots`). `$ref`s
into `$defs` are followed, so `head.precomputed[].lr` is listed like any other key. tests/test_docs.py checks that
the committed page is what this script writes.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "config" / "schema.yaml"
REFERENCE = REPO / "docs" / "recipe-reference.md"
COMMAND = ".venv/bin/python tools/recipe_reference.py"


def resolve(node: dict, defs: dict) -> dict:
    """`node` with its `$ref` followed and its `allOf` merged; the node's own keys win over what they point at."""
    while "$ref" in node:
        target = defs[node["$ref"].removeprefix("#/$defs/")]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    if "allOf" in node:
        merged: dict = {}
        for part in node["allOf"]:
            merged.update(resolve(part, defs))
        node = {**merged, **{k: v for k, v in node.items() if k != "allOf"}}
    return node


def code(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return f"`{text}`"


def bounds(node: dict) -> str:
    words = {"minimum": "≥ {}", "maximum": "≤ {}", "exclusiveMinimum": "> {}", "exclusiveMaximum": "< {}",
             "minItems": "at least {} item{}", "maxItems": "at most {} item{}", "minLength": "at least {} character{}"}
    parts = [text.format(node[key], "" if node[key] == 1 else "s") for key, text in words.items() if key in node]
    if node.get("uniqueItems"):
        parts.append("no repeats")
    if "pattern" in node:
        parts.append(f"matching {code(node['pattern'].replace('|', chr(92) + '|'))}")   # \| inside a table
    return f" ({', '.join(parts)})" if parts else ""


def type_of(node: dict, defs: dict) -> str:
    """`integer (≥ 1)`, `` `csv` | `folders` ``, `number (> 0), or array of number (> 0) (at most 3 items)` ..."""
    node = resolve(node, defs)
    if "enum" in node:
        return " \\| ".join(code(value) for value in node["enum"])
    if "const" in node:
        return code(node["const"])
    if "oneOf" in node or "anyOf" in node:
        return ", or ".join(type_of(choice, defs) for choice in node.get("oneOf", node.get("anyOf")))
    types = node.get("type", "any")
    names = []
    for name in [types] if isinstance(types, str) else types:
        if name == "array":
            items = type_of(node.get("items", {}), defs)
            name = "array of objects" if items == "object" else f"array of {items}"
        names.append(name)
    return " or ".join(names) + bounds(node)


def describe(node: dict, defs: dict) -> str:
    text = node.get("description", "")
    items = resolve(node.get("items", {}), defs)
    if "description" in items:
        text = f"{text}; each item: {items['description']}" if text else f"each item: {items['description']}"
    text = " ".join(str(text).split())
    return re.sub(r"<(?=[A-Za-z/])", "&lt;", text.replace("|", "\\|"))   # keep <class> from reading as HTML


def rows(path: str, node: dict, defs: dict, required: bool) -> list[tuple[str, str, str, str]]:
    """One row for the key at `path`, then one for each key below it (an object's, or each list item's)."""
    node = resolve(node, defs)
    default = code(node["default"]) if "default" in node else ("required" if required else "")
    out = [(path, type_of(node, defs), default, describe(node, defs))]
    below, prefix = node, path
    if node.get("type") == "array":
        below, prefix = resolve(node.get("items", {}), defs), f"{path}[]"
    for key, child in below.get("properties", {}).items():
        out += rows(f"{prefix}.{key}", child, defs, key in below.get("required", []))
    return out


def table(entries) -> list[str]:
    lines = ["| key | type | default | description |", "| --- | --- | --- | --- |"]
    return lines + [f"| `{path}` | {kind} | {default} | {text} |" for path, kind, default, text in entries]


def render(schema_path: Path = SCHEMA) -> str:
    schema = yaml.safe_load(schema_path.read_text())
    defs = schema.get("$defs", {})
    required = schema.get("required", [])
    sections = {key: rows(key, node, defs, key in required) for key, node in schema["properties"].items()}
    top = [entry for entries in sections.values() if len(entries) == 1 for entry in entries]
    out = [f"<!-- Generated from config/schema.yaml by tools/recipe_reference.py. Do not edit: run `{COMMAND}`. -->",
           "", "# Recipe reference", "",
           " ".join(schema.get("description", "").split()), "",
           "Every key a recipe may set. `a.b` is key `b` of section `a`; `a[].b` is key `b` of each item of the list"
           " `a`. Default *required*: the recipe must set it; no default: optional, unset unless given. See"
           " [Recipes](recipes.md) for how the lesson's notebook maps onto these keys.", "",
           "## Top level", "", *table(top), ""]
    for key, entries in sections.items():
        if len(entries) > 1:
            out += [f"## {key}", "", *table(entries), ""]
    return "\n".join(out)


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if REFERENCE.read_text() != text:
            print(f"{REFERENCE.relative_to(REPO)} is out of date with config/schema.yaml: run {COMMAND}")
            return 1
        return 0
    REFERENCE.write_text(text)
    print(f"wrote {REFERENCE.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
