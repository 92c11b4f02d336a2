"""A sweep's search space (pipeline.recipe.space): a bad space is refused naming each key before any trial, and a
trial's sampled values become member overrides that change exactly the swept keys of the recipe."""
import pytest
import yaml

from conftest import CONFIGS, with_defaults
from pipeline.recipe import members, space

MICRO = yaml.safe_load((CONFIGS / "micro_csv.yaml").read_text())
SPACE = {
    "finetune.0.fits.0.lr": {"log_uniform": [1.0e-4, 1.0e-2]},   # inside two lists
    "finetune.0.fits.0.cycle_mult": {"int": [1, 2]},             # in the same list element, a schema default
    "tta.n_aug": {"int": [1, 4]},                                # a mapping the recipe writes
    "head.regularise.mixup_alpha": {"uniform": [0.0, 0.4]},      # a schema default under a written mapping
    "images.shorter_side": {"choice": [40, 48]},
}


def leaves(node, prefix=()) -> dict:
    """Every scalar of a recipe by its dotted path (list items by index)."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else None
    if items is None:
        return {".".join(map(str, prefix)): node}
    return {key: value for name, child in items for key, value in leaves(child, (*prefix, name)).items()}


def test_a_trials_overrides_change_exactly_the_swept_keys_and_pass_the_member_check():
    dimensions = space.parsed(SPACE, MICRO)
    assert [(d.key, d.kind, d.log) for d in dimensions][:3] == [
        ("finetune.0.fits.0.lr", "log_uniform", True), ("finetune.0.fits.0.cycle_mult", "int", False),
        ("tta.n_aug", "int", False)]
    values = {"finetune.0.fits.0.lr": 3.0e-3, "finetune.0.fits.0.cycle_mult": 2, "tta.n_aug": 3,
              "head.regularise.mixup_alpha": 0.2, "images.shorter_side": 48}
    overrides = space.overrides(MICRO, values, dimensions)
    recipe = {**MICRO, "members": {"trial-0": overrides}}
    assert members.override_problems(recipe) == []
    before, after = leaves(with_defaults(MICRO)), leaves(with_defaults(members.member_recipe(recipe, "trial-0")))
    changed = {key for key in before.keys() | after.keys() if before.get(key) != after.get(key)}
    # The micro recipe's lr is a list (one per layer group): the sampled number replaces the whole of it.
    assert {next((swept for swept in values if key.startswith(swept + ".")), key) for key in changed} == set(values)
    assert all(after[key] == value for key, value in values.items())


@pytest.mark.parametrize("key, spec, message", [
    ("split.n_folds", {"int": [2, 5]}, "cannot change the split"),
    ("data.layout", {"choice": ["csv"]}, "not a trial's to set"),
    ("images.jpeg_quality", {"int": [80, 95]}, "only images.shorter_side"),
    ("tta.n_augs", {"int": [1, 4]}, "tta has no 'n_augs'"),
    ("finetune.3.size", {"int": [32, 64]}, "finetune has no 3"),
    ("head", {"int": [1, 2]}, "is a whole section"),
    ("tta.n_aug", {"int": [4, 4]}, "needs low < high"),
    ("tta.n_aug", {"int": [1.5, 4]}, "whole-number bounds"),
    ("finetune.0.fits.0.lr", {"log_uniform": [0, 1.0e-2]}, "bounds above 0"),
    ("finetune.0.fits.0.lr", {"uniform": [1.0e-3]}, "needs [low, high]"),
    ("model.arch", {"choice": []}, "non-empty list"),
    ("tta.n_aug", {"normal": [1, 4]}, "is not a distribution"),
    ("tta.n_aug", 4, "is not a distribution"),
])
def test_a_bad_key_or_distribution_is_one_line_naming_the_key_and_the_file(key, spec, message):
    with pytest.raises(space.SpaceError) as refused:
        space.parsed({key: spec, "tta.mode": {"choice": ["random", "deterministic"]}}, MICRO, "sweep.yaml")
    assert len(refused.value.problems) == 1, refused.value.problems  # the good key beside it raises nothing
    line, = refused.value.problems
    assert line.startswith(f"sweep.yaml: {key}: ") and message in line, line
    assert "Traceback" not in str(refused.value)


def test_every_problem_of_a_space_is_named_at_once():
    bad = {"split.n_folds": {"int": [2, 5]}, "tta.n_aug": {"int": [4, 1]}, "model.arch": {"choice": []}}
    with pytest.raises(space.SpaceError) as refused:
        space.parsed(bad, MICRO)
    assert [line.split(": ")[1] for line in refused.value.problems] == list(bad)


def test_a_key_inside_another_swept_key_is_refused():
    with pytest.raises(space.SpaceError, match="finetune.0.fits.0.lr: lies inside finetune.0.fits, "):
        space.parsed({"finetune.0.fits": {"choice": [[{"lr": 1.0e-3, "n_cycle": 1}]]},
                      "finetune.0.fits.0.lr": {"log_uniform": [1.0e-4, 1.0e-2]}}, MICRO)


@pytest.mark.parametrize("text, message", [("", "at least one recipe key"), ("[1, 2]", "at least one recipe key"),
                                           ("a: [", "cannot be read as YAML")])
def test_an_empty_or_unreadable_space_file_is_one_line(tmp_path, text, message):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    with pytest.raises(space.SpaceError) as refused:
        space.read(path, MICRO)
    line, = refused.value.problems
    assert line.startswith(f"{path}: ") and message in line, line
