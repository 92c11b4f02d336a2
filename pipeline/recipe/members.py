"""Several members in one recipe (`members`, `blend`, `pseudo`): each member's own recipe, and the checks a recipe
with members passes before any job is planned.

On a K-fold split the members are blended on their out-of-fold predictions. On a single split they are trained and
scored side by side on the same validation set (a sweep's trials) and not blended; the first member's predictions
make the recipe's submission.

A member is a set of overrides of the rest of the recipe, merged as Snakemake merges a --configfile: mappings key by
key, anything else (a list, a number) replaced whole. Every member trains its own K-fold chain on the same folds,
so only what shapes a model's chain may differ; the data, the split and everything after the blend are the
recipe's. With `pseudo`, the students are one more member, `<student>-pseudo`: the student member's recipe, trained
on each fold's pseudo-labelled split.
"""
from __future__ import annotations

import copy

# What a member may override: the keys that shape one model's chain. `images` only for its resize cache's size.
MEMBER_KEYS = ("seed", "amp", "model", "transforms", "loader", "train", "head", "finetune", "tta", "images")
MEMBER_IMAGE_KEYS = ("shorter_side",)
STUDENT_SUFFIX = "-pseudo"


def merged(base: dict, overrides: dict) -> dict:
    """`base` with `overrides` merged in: mappings key by key, anything else replaced (Snakemake's config merge)."""
    result = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merged(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


def names(config: dict) -> list[str]:
    """The members in the recipe's order; [] for a recipe of one model."""
    return list(config.get("members") or {})


def member_recipe(config: dict, name: str) -> dict:
    """One member's whole recipe: the recipe less its members, with the member's overrides merged in."""
    base = {key: value for key, value in config.items() if key not in ("members", "blend", "pseudo")}
    return merged(base, config["members"][name])


def override_problems(config: dict) -> list[str]:
    """Overrides a member may not make: anything outside one model's chain, above all the split."""
    problems = []
    for name, overrides in (config.get("members") or {}).items():
        for key, value in overrides.items():
            if key == "split":
                problems.append(f"members.{name}.split: a member cannot change the split; every member trains on the "
                                "same folds, which the blend's out-of-fold weights and scores rely on")
            elif key == "images" and isinstance(value, dict) and set(value) <= set(MEMBER_IMAGE_KEYS):
                continue
            elif key == "images":
                others = sorted(set(value) - set(MEMBER_IMAGE_KEYS)) if isinstance(value, dict) else [value]
                problems.append(f"members.{name}.images: a member may set only images.shorter_side (its own resize "
                                f"cache); {others} is the data's, for the whole recipe")
            elif key not in MEMBER_KEYS:
                problems.append(f"members.{name}.{key}: not a member's to set; a member overrides only "
                                f"{', '.join(MEMBER_KEYS)}")
    return problems


def student(config: dict) -> str | None:
    """The member whose recipe the pseudo-label round's students train with; None without `pseudo`."""
    if "pseudo" not in config:
        return None
    return config["pseudo"].get("student") or names(config)[0]


def student_chain(config: dict) -> str | None:
    """The students' chain, as a member name: `<student>-pseudo` (a name no member can have)."""
    name = student(config)
    return name + STUDENT_SUFFIX if name else None


def teachers(config: dict) -> list[str]:
    """The members whose fold-k models make fold k's teacher: all of them for the blend, else the one named."""
    teacher = config["pseudo"]["teacher"]
    return names(config) if teacher == "blend" else [teacher]


def recipe_problems(config: dict, kfold: bool) -> list[str]:
    """`members`, `blend` and `pseudo` together: what must hold before the members' recipes are even built."""
    members = names(config)
    if not members:
        return []  # a `blend` or `pseudo` written without members is refused as unused (pipeline.workflow.unused_keys)
    problems = override_problems(config)
    if not kfold:
        return problems  # trained and scored side by side on the one split, not blended: nothing more to agree on
    if len(config["split"].get("folds") or []) == 1 or config["split"].get("n_folds", 2) < 2:
        problems.append("members: the blend's cross-fitted score needs at least two folds in split.folds")
    if "pseudo" in config:
        pseudo = config["pseudo"]
        if pseudo["teacher"] != "blend" and pseudo["teacher"] not in members:
            problems.append(f"pseudo.teacher: {pseudo['teacher']!r} is neither `blend` nor a member ({members})")
        if pseudo.get("student") is not None and pseudo["student"] not in members:
            problems.append(f"pseudo.student: {pseudo['student']!r} is not a member ({members})")
        if pseudo["teacher"] == "blend" and config["blend"]["method"] != "weights":
            problems.append("pseudo.teacher: blend needs blend.method: weights (fold k's teacher blends fold k's "
                            "models with the weights fitted without fold k; a stacker has no such weights)")
    return problems


def soft_target_problems(config: dict, recipe: dict) -> list[str]:
    """Soft pseudo-labels cannot be mixed: torchvision's MixUp and CutMix take integer labels only."""
    if config.get("pseudo", {}).get("mode") != "soft":
        return []
    sections = [("head.regularise", recipe["head"]["regularise"])]
    sections += [(f"finetune[{index}].regularise", step["regularise"]) for index, step in enumerate(recipe["finetune"])]
    return [f"pseudo.mode: soft cannot train the student ({student(config)}) with {key}'s MixUp / CutMix, which "
            "take integer labels; set the student's mixup_alpha and cutmix_alpha to 0, or use mode: threshold"
            for key, section in sections if section["mixup_alpha"] or section["cutmix_alpha"]]


def uniform_problems(config: dict, recipes: dict[str, dict]) -> list[str]:
    """What every member must share because a rule declares its outputs once for all: the head's lr_find (its plot
    and table are outputs of the head's rule)."""
    return [f"members.{name}.head.lr_find: {recipe['head']['lr_find']} differs from the recipe's "
            f"{config['head']['lr_find']}: the head's lr_find is on or off for every member alike"
            for name, recipe in recipes.items() if recipe["head"]["lr_find"] != config["head"]["lr_find"]]
