"""A sweep's search space (issue 35): recipe keys, dotted as MLflow shows them, mapped to distributions, checked
against the recipe before any trial, and a trial's sampled values turned into a member's overrides.

    finetune.1.fits.0.lr: {log_uniform: [1.0e-4, 1.0e-2]}
    tta.n_aug: {int: [2, 8]}
    head.regularise.label_smoothing: {uniform: [0.0, 0.2]}
    model.arch: {choice: [tf_efficientnet_lite0, resnet34]}

An optional `sweep:` section holds the study's own settings (`Settings`): the pruner and how many trials it and the
sampler wait for.

    sweep: {pruner: median, prune_after: 3, random_trials: 4}

A trial is a member of the workflow (pipeline.recipe.members), so a key must be one a member may set: never the
split, which every trial shares. A key must name something the recipe has, written or a schema default, so that a
typo is refused rather than swept to no effect.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline.recipe import members
from pipeline.recipe.defaults import filled

DISTRIBUTIONS = ("log_uniform", "uniform", "int", "choice")
SETTINGS_KEY = "sweep"
PRUNERS = ("median", "successive_halving", "none")


class SpaceError(ValueError):
    """A space that cannot be swept: one line per problem, each naming its key."""

    def __init__(self, source: str, problems: list[str]):
        self.problems = [f"{source}: {problem}" for problem in problems]
        super().__init__("\n".join(self.problems))


@dataclass(frozen=True)
class Dimension:
    """One swept key: its dotted name, its path into the recipe, and its distribution."""
    key: str
    path: tuple[str | int, ...]
    kind: str                   # one of DISTRIBUTIONS
    bounds: tuple = ()          # (low, high) for the ranges
    choices: tuple = ()         # for `choice`

    @property
    def log(self) -> bool:
        return self.kind == "log_uniform"


@dataclass(frozen=True)
class Settings:
    """The study's own settings (the space file's `sweep:` section)."""
    pruner: str = "median"      # median: Optuna's MedianPruner; successive_halving; none
    prune_after: int = 3        # trials that must have finished their first fine-tune size before any is pruned
    random_trials: int = 4      # trials sampled at random before TPE models the ones before


def read(space_file: str | Path, recipe: dict) -> list[Dimension]:
    """The space in `space_file` for `recipe` (as written, before the schema's defaults); SpaceError names every
    problem at once."""
    return load(space_file, recipe)[0]


def load(space_file: str | Path, recipe: dict) -> tuple[list[Dimension], Settings]:
    """The space in `space_file` and its `sweep:` settings."""
    source = str(space_file)
    try:
        space = yaml.safe_load(Path(space_file).read_text())
    except (OSError, yaml.YAMLError) as error:
        raise SpaceError(source, [f"cannot be read as YAML: {error}"]) from None
    if isinstance(space, dict) and SETTINGS_KEY in space:
        space = dict(space)
        settings_problems, settings = settings_of(space.pop(SETTINGS_KEY))
        try:
            dimensions = parsed(space, recipe, source)
        except SpaceError as error:
            raise SpaceError(source, [line.removeprefix(f"{source}: ") for line in error.problems]
                             + settings_problems) from None
        if settings_problems:
            raise SpaceError(source, settings_problems)
        return dimensions, settings
    return parsed(space, recipe, source), Settings()


def settings_of(section: Any) -> tuple[list[str], Settings]:
    """The `sweep:` section's problems (one line each) and its settings."""
    if not isinstance(section, dict):
        return [f"{SETTINGS_KEY}: must be a mapping of pruner, prune_after, random_trials"], Settings()
    known = Settings.__dataclass_fields__
    problems = [f"{SETTINGS_KEY}.{key}: unknown; the settings are {', '.join(known)}" for key in section
                if key not in known]
    if "pruner" in section and section["pruner"] not in PRUNERS:
        problems.append(f"{SETTINGS_KEY}.pruner: {section['pruner']!r} is not one of {', '.join(PRUNERS)}")
    for key in ("prune_after", "random_trials"):
        value = section.get(key, 0)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            problems.append(f"{SETTINGS_KEY}.{key}: needs a whole number >= 0; got {value!r}")
    if problems:
        return problems, Settings()
    return [], Settings(**section)


def parsed(space: Any, recipe: dict, source: str = "space") -> list[Dimension]:
    """`space` (a mapping of dotted key to distribution) checked against `recipe`."""
    if not isinstance(space, dict) or not space:
        raise SpaceError(source, ["must map at least one recipe key to a distribution, e.g. "
                                  "`tta.n_aug: {int: [2, 8]}`"])
    with_defaults, dimensions, problems = filled(recipe), [], []
    for key, spec in space.items():
        path = tuple(int(part) if part.isdigit() else part for part in str(key).split("."))
        found = key_problems(str(key), path, with_defaults) + distribution_problems(str(key), spec)
        problems += found
        if not found:
            dimensions.append(dimension(str(key), path, spec))
    problems += overlap_problems([d.path for d in dimensions])
    if problems:
        raise SpaceError(source, problems)
    return dimensions


def key_problems(key: str, path: tuple, recipe: dict) -> list[str]:
    """Why a trial may not set `key`: not a member's to set, or nothing in the recipe by that name."""
    top = path[0]
    if top == "split":
        return [f"{key}: every trial trains on the same folds, so a sweep cannot change the split"]
    if top not in members.MEMBER_KEYS or (top == "images" and path[1:2] != ("shorter_side",)):
        return [f"{key}: not a trial's to set; a trial (a member) sets only keys under "
                f"{', '.join(members.MEMBER_KEYS)} (of images, only images.shorter_side)"]
    node: Any = recipe
    for depth, part in enumerate(path):
        if isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            where = ".".join(map(str, path[:depth])) or "the recipe"
            return [f"{key}: {where} has no {part!r} (neither written nor a schema default)"]
    if isinstance(node, dict):
        return [f"{key}: is a whole section; sweep the keys inside it"]
    return []


def distribution_problems(key: str, spec: Any) -> list[str]:
    """Why `spec` is not one distribution of DISTRIBUTIONS with sound bounds."""
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
        return [f"{key}: {spec!r} is not a distribution; write one of "
                + ", ".join(f"{{{name}: ...}}" for name in DISTRIBUTIONS)]
    (kind, value), = spec.items()
    if kind == "choice":
        if not isinstance(value, list) or not value:
            return [f"{key}: choice needs a non-empty list of values"]
        return []
    if not (isinstance(value, list) and len(value) == 2 and all(is_number(bound) for bound in value)):
        return [f"{key}: {kind} needs [low, high], two numbers; got {value!r}"]
    low, high = value
    if kind == "int" and not all(isinstance(bound, int) for bound in value):
        return [f"{key}: int needs whole-number bounds; got {value!r}"]
    if not low < high:
        return [f"{key}: {kind} needs low < high; got [{low}, {high}]"]
    if kind == "log_uniform" and low <= 0:
        return [f"{key}: log_uniform needs bounds above 0; got [{low}, {high}]"]
    return []


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def overlap_problems(paths: list[tuple]) -> list[str]:
    """Two keys where one lies inside the other would each overwrite the other's value."""
    dotted = [".".join(map(str, path)) for path in paths]
    return [f"{inner}: lies inside {outer}, which is swept too" for outer, outer_path in zip(dotted, paths)
            for inner, inner_path in zip(dotted, paths)
            if inner_path != outer_path and inner_path[:len(outer_path)] == outer_path]


def dimension(key: str, path: tuple, spec: dict) -> Dimension:
    (kind, value), = spec.items()
    if kind == "choice":
        return Dimension(key, path, kind, choices=tuple(value))
    return Dimension(key, path, kind, bounds=tuple(value))


def overrides(recipe: dict, values: dict[str, Any], dimensions: list[Dimension]) -> dict:
    """A trial's member overrides: `values` (dotted key -> sampled value) set in `recipe` (as written). Mappings
    merge key by key, so a mapping carries only what changed; a list is replaced whole (Snakemake's config merge), so
    a list carries every other element as it stands (a list the recipe leaves to the schema, as the default)."""
    # the lists as written where written (the schema fills their items the same either way), so that the
    # overrides read as the recipe does
    paths, base = {dim.key: dim.path for dim in dimensions}, members.merged(filled(recipe), recipe)
    result: dict = {}
    for key, value in values.items():
        current = members.merged(base, result)
        result = members.merged(result, with_value(current, paths[key], value))
    return result


def with_value(node: Any, path: tuple, value: Any) -> Any:
    """The override that sets `path` under `node` to `value`."""
    if not path:
        return copy.deepcopy(value)
    part, rest = path[0], path[1:]
    if isinstance(node, list):
        items = copy.deepcopy(node)
        child = with_value(items[part], rest, value)
        items[part] = members.merged(items[part], child) if isinstance(items[part], dict) and isinstance(child, dict) \
            else child
        return items
    below = node.get(part) if isinstance(node, dict) else None
    return {part: with_value(below, rest, value)}
