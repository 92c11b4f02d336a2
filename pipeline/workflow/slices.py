"""Each rule's `--params` slice, built from what its stage declares: one source for both, so they cannot drift.

A stage module declares, as literal tuples,

    RECIPE_KEYS     where in the recipe its keys come from (see pipeline.recipe.defaults): "loader" (a section),
                    "model.arch" (one key of a section), "seed" (a top-level key)
    WORKFLOW_KEYS   what the workflow derives and passes besides them (the backbone's preprocessing, a size, ...)
    USED_WHEN       declared keys the stage reads only when another key of its slice has a value:
                    {"split.n_folds": ("split.method", "stratified_kfold")}; the slice leaves them out otherwise, so
                    an edit to a key the run does not use reruns nothing

The Snakefile reads those tuples with `ast`, without importing the stage (and torch), and `stage_slice` spreads the
declared recipe keys into one flat JSON object, as the stage's parser (pipeline.cli) reads it back. The stage refuses to
read a key it did not declare.
"""
from __future__ import annotations

import ast
import json
from functools import cache
from pathlib import Path
from typing import NamedTuple

STAGES_DIR = Path(__file__).resolve().parents[1] / "stages"


class Declaration(NamedTuple):
    recipe_keys: tuple[str, ...]
    workflow_keys: tuple[str, ...]
    used_when: dict[str, tuple[str, str]]


class SliceError(ValueError):
    """A rule passes what its stage does not declare: a bug in the workflow, not in the recipe."""


@cache
def declaration(stage: str) -> Declaration:
    """The stage's RECIPE_KEYS, WORKFLOW_KEYS and USED_WHEN, read from its source."""
    path = STAGES_DIR / f"{stage}.py"
    found = {}
    for node in ast.parse(path.read_text(), str(path)).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            if node.targets[0].id in ("RECIPE_KEYS", "WORKFLOW_KEYS", "USED_WHEN"):
                found[node.targets[0].id] = ast.literal_eval(node.value)
    if "RECIPE_KEYS" not in found:
        raise SliceError(f"{path}: no literal RECIPE_KEYS tuple")
    return Declaration(tuple(found["RECIPE_KEYS"]), tuple(found.get("WORKFLOW_KEYS", ())), found.get("USED_WHEN", {}))


def flat(name: str) -> str:
    """A declared name's key in the flat slice: "split.n_folds" -> "n_folds", "seed" -> "seed"."""
    return name.rpartition(".")[2]


def without_unused(values: dict, used_when: dict[str, tuple[str, str]], stage: str) -> dict:
    """`values` less the keys whose USED_WHEN condition does not hold in them."""
    kept = dict(values)
    for name, (condition, wanted) in used_when.items():
        if flat(condition) not in values:
            raise SliceError(f"pipeline/stages/{stage}.py: USED_WHEN {name!r} depends on {condition!r}, "
                             "which is not in its slice")
        if values[flat(condition)] != wanted:
            kept.pop(flat(name), None)
    return kept


def recipe_values(names: tuple[str, ...], recipe: dict, sections: dict) -> dict:
    """The declared keys' values, flat; `sections` stands in for whole recipe sections (one `finetune` item)."""
    values = {}
    for name in names:
        section, _, key = name.partition(".")
        source = sections.get(section, recipe.get(section))
        named = {key: source[key]} if key else source if isinstance(source, dict) else {section: source}
        if overlap := values.keys() & named.keys():
            raise SliceError(f"{name!r} repeats {sorted(overlap)}")
        values.update(named)
    return values


def stage_slice(stage: str, recipe: dict, sections: dict | None = None, **given) -> str:
    """The stage's slice of `recipe` as canonical JSON (Snakemake reruns a job when this text changes).

    `sections` replaces whole sections (a size's `finetune` item, a K-fold split's); `given` sets declared keys to
    what this job uses instead (a member's shorter side) and passes the stage's WORKFLOW_KEYS."""
    declared = declaration(stage)
    values = without_unused(recipe_values(declared.recipe_keys, recipe, sections or {}), declared.used_when, stage)
    unknown = given.keys() - values.keys() - set(declared.workflow_keys)
    if unknown:
        raise SliceError(f"the {stage} rule passes {sorted(unknown)}, "
                         f"which pipeline/stages/{stage}.py does not declare")
    return json.dumps({**values, **given}, sort_keys=True)
