"""Keys a recipe writes that its run would never read: refused before planning, never silently ignored.

What a run reads is what its stages declare (RECIPE_KEYS, and USED_WHEN for a key read only under another key's
value; see pipeline.workflow.slices), over the stages its plan holds: the out-of-fold stage only in a K-fold run, the
blend only with members, the pseudo-label round only with `pseudo`. The keys no stage reads are the workflow's own
(WORKFLOW_READS); tests/test_recipe_fuzz.py checks that every key of the schema is one or the other.

This works on the recipe as written, not with the schema's defaults filled in: a `blend: {}` the schema supplies is
no reason to stop, a `blend:` the user wrote is.
"""
from __future__ import annotations

from functools import cache

from pipeline.recipe.defaults import recipe_schema, section_keys
from pipeline.workflow.slices import STAGES_DIR, declaration

# Read by the workflow itself (the Snakefile, the plan-time checks), not through a stage's slice.
WORKFLOW_READS = ("data_dir", "out_dir", "devices", "demo", "data.sample_submission", "split.folds", "members",
                  "finetune.lr_find", "pseudo.student")

# Stages in a run's plan only under a condition on the (filled) recipe, with the condition as a user reads it.
CONDITIONAL_STAGES = {
    "oof": (lambda recipe: "folds" in recipe["split"], "a K-fold run (split.folds)"),
    "blend": (lambda recipe: bool(recipe.get("members")) and "folds" in recipe["split"],
              "a K-fold recipe (split.folds) with `members`"),
    "pseudo_labels": (lambda recipe: bool(recipe.get("members")) and "folds" in recipe["split"] and "pseudo" in recipe,
                      "a K-fold recipe (split.folds) with `members`"),
    "member_score": (lambda recipe: bool(recipe.get("members")), "a sweep's trials (`members`)"),
}
# Keys the workflow replaces under another key (a K-fold run passes the split stage every fold at once).
REPLACED_UNDER = {"split.fold": ("split.folds", "a K-fold run (split.folds) trains every fold it lists instead")}


@cache
def stages() -> list[str]:
    """The stages that read recipe keys (demo_data takes the `demo:` section's values as flags of its own)."""
    return sorted(path.stem for path in STAGES_DIR.glob("*.py") if "\nRECIPE_KEYS = " in path.read_text())


def leaves(name: str) -> list[str]:
    """A declared name as the recipe keys it covers: "split" -> split.method, split.val_pct, ...; "head.size" as is."""
    if "." in name:
        return [name]
    keys = section_keys(recipe_schema()["properties"][name])
    return [f"{name}.{key}" for key in keys] if keys else [name]


def written(recipe: dict, name: str) -> bool:
    """Whether the recipe as written has `name` (in any item of a list section such as finetune)."""
    section, _, key = name.partition(".")
    value = recipe.get(section)
    if not key:
        return section in recipe
    items = value if isinstance(value, list) else [value]
    return any(isinstance(item, dict) and key in item for item in items)


def readers(recipe: dict) -> dict[str, list[str]]:
    """{recipe key: why each stage that declares it does not read it in this run (an empty string: it does)}."""
    found: dict[str, list[str]] = {}
    for stage in stages():
        in_plan, needs = CONDITIONAL_STAGES.get(stage, (lambda _: True, ""))
        declared = declaration(stage)
        for name in (leaf for declared_name in declared.recipe_keys for leaf in leaves(declared_name)):
            if not in_plan(recipe):
                why = f"only {needs} runs the {stage} stage that reads it"
            elif name in REPLACED_UNDER and written(recipe, REPLACED_UNDER[name][0]):
                why = REPLACED_UNDER[name][1]
            elif name in declared.used_when:
                condition, wanted = declared.used_when[name]
                section, _, key = condition.partition(".")
                actual = recipe[section][key] if key else recipe[section]
                why = "" if actual == wanted else f"it is read only when {condition} is {wanted!r} (here {actual!r})"
            else:
                why = ""
            found.setdefault(name, []).append(why)
    return found


def unused_problems(as_written: dict, recipe: dict) -> list[str]:
    """One line per key `as_written` sets that no stage of this run reads (one for a whole section when none of its
    keys is read, as `blend:` without members); `recipe` is the recipe with the schema's defaults."""
    declared = readers(recipe)
    unread = {name: whys[0] for name, whys in declared.items() if all(whys)}
    problems, refused_sections = [], set()
    for section in as_written:
        read_here = [name for name in declared if name.partition(".")[0] == section]
        if read_here and all(name in unread for name in read_here):
            problems.append(f"{section}: written, but this run would ignore the whole section: "
                            f"{unread[read_here[0]]}; remove it")
            refused_sections.add(section)
    problems += [f"{name}: written, but this run would ignore it: {why}; remove it" for name, why in unread.items()
                 if name.partition(".")[0] not in refused_sections and written(as_written, name)]
    return problems
