"""The whole recipe checked before any job is planned, as one function: rules/recipe.smk calls it at parse time and
the recipe fuzzer (tests/test_recipe_fuzz.py) calls it in process, so what one accepts the other accepts.

The checks run in an order where each may assume what the ones before it established, so none crashes on what a
later one would have refused: the schema on the recipe as written; then, with the schema's defaults, all at once, keys
written but never read, what `members`, `blend` and `pseudo` need of each other, the values stage by stage and the
data; then the backbones, built for real (cached), and what they can take; then each member's recipe. Every problem is one line naming its key, prefixed
with the recipe file that wrote the key.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from pipeline.data.dataset import DataScan, scan_data
from pipeline.data.demo_folder import ownership_problem
from pipeline.recipe import checks, members
from pipeline.recipe.defaults import filled, recipe_schema
from pipeline.tracking.store import tracking_problems
from pipeline.workflow.backbone_check import BackboneProblem, checked_backbone
from pipeline.workflow.unused_keys import unused_problems

LEADING_KEY = re.compile(r"([A-Za-z_]\w*(?:\.[A-Za-z_][\w-]*|\[\d+\])*)[ :]")


class RecipeRefused(Exception):
    """The recipe cannot run: every problem found, one line each."""

    def __init__(self, problems: list[str], heading: str = "the recipe cannot run"):
        self.problems = problems
        super().__init__(f"{heading}:\n" + "\n".join(f"  - {problem}" for problem in problems))


@dataclass
class CheckedRecipe:
    recipe: dict  # as written, with the schema's defaults
    folds: list[int]  # [] for a single split
    backbone: dict  # pipeline.models.classifier.describe's answer for model.arch and model.weights
    # Each member's (and the students') whole recipe and backbone, in the recipe's order; {} without members.
    chains: dict[str, tuple[dict, dict]] = field(default_factory=dict)
    student: str | None = None  # the students' chain name, with `pseudo`
    data_scan: DataScan | None = None  # one stat() per file of data_dir (None for a demo recipe, built by a job)


def origin(problem: str, sources: list[tuple[str, dict]]) -> str:
    """The problem prefixed with the recipe file that wrote its leading key (the last one: later files override)."""
    match = LEADING_KEY.match(problem)
    if not match or match[1].split(".")[0].split("[")[0] not in recipe_schema()["properties"]:
        return problem
    parts = [int(part) if part.isdigit() else part for part in re.findall(r"[^.\[\]]+", match[1])]
    best_name, best_depth = None, 0
    for name, source in sources:
        depth, value = 0, source
        for part in parts:
            if isinstance(part, int) and isinstance(value, list) and part < len(value):
                value = value[part]
            elif isinstance(part, str) and isinstance(value, dict) and part in value:
                value = value[part]
            else:
                break
            depth += 1
        if depth and depth >= best_depth:
            best_name, best_depth = name, depth
    return f"{best_name}: {problem}" if best_name else problem


def stop_on(problems: list[str], sources, heading: str = "the recipe cannot run") -> None:
    if problems:
        raise RecipeRefused([origin(problem, sources) for problem in problems], heading)


def backbone_of(recipe: dict, sources, where: str = "") -> dict:
    try:
        return checked_backbone(recipe["model"]["arch"], recipe["model"]["weights"])
    except BackboneProblem as problem:
        raise RecipeRefused([origin(f"{where}model: {problem}", sources)], "the recipe cannot run") from None


def checked(as_written: dict, sources: list[tuple[str, dict]] = (), environ=os.environ) -> CheckedRecipe:
    """`as_written` (the merged recipe files and --config values) checked and filled, or RecipeRefused.
    `sources`: (file name, what it wrote) in the order merged, to name the file behind each problem."""
    stop_on(checks.schema_problems(as_written, recipe_schema()), sources)
    recipe = filled(as_written)
    folds, fold_problems = checks.kfold_folds(recipe)
    sample_named = "sample_submission" in as_written.get("data", {})
    scan = None if "demo" in recipe else scan_data(recipe["data_dir"])
    # Each of these reads a schema-valid recipe and nothing another one establishes: all their problems at once.
    stop_on(fold_problems + unused_problems(as_written, recipe) + members.recipe_problems(recipe, bool(folds))
            + checks.runtime_problems(recipe) + checks.finetune_problems(recipe) + checks.tta_problems(recipe)
            + checks.out_dir_problems(recipe) + checks.data_problems(recipe, sample_named, scan)
            + tracking_problems(recipe, environ), sources)
    if "demo" in recipe and (problem := ownership_problem(recipe["data_dir"])):
        raise RecipeRefused([problem], "the demo recipe cannot build its data")
    backbone = backbone_of(recipe, sources)
    stop_on(checks.regularise_problems(recipe, backbone), sources)
    result = CheckedRecipe(recipe=recipe, folds=folds, backbone=backbone, data_scan=scan)
    if members.names(recipe):
        result.chains = {name: member_chain(recipe, name, sources) for name in members.names(recipe)}
        stop_on(members.uniform_problems(recipe, {name: chain[0] for name, chain in result.chains.items()}), sources)
        result.student = members.student_chain(recipe)
        if result.student:
            result.chains[result.student] = result.chains[members.student(recipe)]
            stop_on(members.soft_target_problems(recipe, result.chains[result.student][0]), sources)
    return result


def member_chain(recipe: dict, name: str, sources) -> tuple[dict, dict]:
    """A member's whole recipe, checked as a recipe is (each problem prefixed with the member), and its backbone."""
    as_written = members.member_recipe(recipe, name)
    prefixed = [f"members.{name}: {problem}" for problem in checks.schema_problems(as_written, recipe_schema())]
    stop_on(prefixed, sources)
    member = filled(as_written)
    stop_on([f"members.{name}: {problem}" for problem in checks.runtime_problems(member)
             + checks.finetune_problems(member) + checks.tta_problems(member)], sources)
    backbone = backbone_of(member, sources, f"members.{name}: ")
    stop_on([f"members.{name}: {problem}" for problem in checks.regularise_problems(member, backbone)], sources)
    return member, backbone
