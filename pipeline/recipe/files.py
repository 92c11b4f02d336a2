"""Recipe files read as Snakemake reads them (YAML, which also reads JSON), refusing what YAML would drop silently.

PyYAML, and so Snakemake's `configfile`, keeps the last of two equal keys in one mapping: a member written twice
under `members:`, or a `lr:` repeated in a fit, would quietly lose one. Every recipe file and fragment is read again
here, before planning, by a loader that names the key, the file and both lines instead. A YAML merge key (`<<:`) is
an explicit override and stays allowed.
"""
from __future__ import annotations

from pathlib import Path

import yaml


class RecipeFileError(ValueError):
    """A recipe file that cannot be read as written; the message names the file and line."""


class _UniqueKeyLoader(yaml.SafeLoader):
    def construct_mapping(self, node, deep=False):
        first_lines = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in first_lines:
                raise RecipeFileError(f"{key_node.start_mark.name} line {line}: key {key!r} is written twice in one "
                                      f"mapping (first on line {first_lines[key]}); YAML would silently keep only "
                                      "the last one: remove or rename one of them")
            first_lines[key] = line
        return super().construct_mapping(node, deep)


def parse(text: str, name: str = "<recipe>") -> dict:
    """A recipe's text as a dict; raises RecipeFileError naming `name` for a repeated key, bad YAML or a non-mapping."""
    loader = _UniqueKeyLoader(text)
    loader.name = name  # every mark, so every message, names the file
    try:
        recipe = loader.get_single_data()
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        line = f" line {where.line + 1}" if where else ""
        raise RecipeFileError(f"{name}{line}: not valid YAML ({getattr(error, 'problem', None) or error})") from None
    finally:
        loader.dispose()
    if recipe is None:
        return {}
    if not isinstance(recipe, dict):
        raise RecipeFileError(f"{name}: a recipe is a mapping of keys (data_dir: ..., model: ...), not a "
                              f"{type(recipe).__name__}")
    return recipe


def load(path: str | Path) -> dict:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise RecipeFileError(f"{path}: cannot be read ({error})") from None
    return parse(text, str(path))


def read_all(paths) -> tuple[list[tuple[str, dict]], list[str]]:
    """Each file of `paths` as written, (name, recipe) in order, and one line per file that cannot be read."""
    sources, problems = [], []
    for path in paths:
        try:
            sources.append((str(path), load(path)))
        except RecipeFileError as error:
            problems.append(str(error))
    return sources, problems


def problems(paths) -> list[str]:
    """What stops the recipe files `paths` being read as written: one line per file."""
    return read_all(paths)[1]
