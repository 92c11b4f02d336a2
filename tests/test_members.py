"""A recipe's members (pipeline/recipe/members.py): each member's own recipe, merged as Snakemake merges a --configfile,
and the checks a recipe with members, a blend and a pseudo-label round passes before anything is planned.
tests/test_blend_workflow.py runs such a recipe end to end."""
import pytest
import yaml

from conftest import CONFIGS, REPO, SCHEMA, with_defaults
from pipeline.recipe import members
from pipeline.recipe import checks as recipe_checks
from pipeline.workflow.unused_keys import unused_problems

KFOLD = yaml.safe_load((CONFIGS / "kfold_csv.yaml").read_text())


def blend_recipe(**sections) -> dict:
    return with_defaults({**KFOLD, "members": {"a": {}, "b": {"seed": 7, "model": {"ps": [0.2, 0.2]}}}, **sections})


def test_a_member_recipe_merges_mappings_key_by_key_and_replaces_lists_whole():
    recipe = blend_recipe()
    b = members.member_recipe(recipe, "b")
    assert b["seed"] == 7 and recipe["seed"] == 42  # the recipe itself is left alone
    assert b["model"] == {**recipe["model"], "ps": [0.2, 0.2]}  # arch and weights kept, ps replaced whole
    assert "members" not in b and "blend" not in b and "pseudo" not in b
    assert members.member_recipe(recipe, "a") == {key: value for key, value in recipe.items()
                                                  if key not in ("members", "blend", "pseudo")}
    finetune = [{"size": 32, "fits": [{"lr": 1.0e-3, "n_cycle": 1}]}]
    replaced = members.member_recipe(blend_recipe(members={"c": {"finetune": finetune}}), "c")
    assert replaced["finetune"] == finetune  # a list is replaced, never merged item by item


@pytest.mark.parametrize("overrides, problem", [
    ({"split": {"seed": 3}}, "members.x.split: a member cannot change the split"),
    ({"images": {"jpeg_quality": 80}}, "members.x.images: a member may set only images.shorter_side"),
    ({"data_dir": "elsewhere"}, "members.x.data_dir: not a member's to set"),
    ({"calibration": {"enabled": False}}, "members.x.calibration: not a member's to set"),
])
def test_a_member_that_changes_the_folds_or_the_data_is_refused_naming_the_key(overrides, problem):
    problems = members.recipe_problems(blend_recipe(members={"a": {}, "x": overrides}), kfold=True)
    assert len(problems) == 1 and problems[0].startswith(problem), problems


def test_a_member_may_have_its_own_resize_cache_size():
    assert members.recipe_problems(blend_recipe(members={"a": {}, "x": {"images": {"shorter_side": 48}}}),
                                   kfold=True) == []


@pytest.mark.parametrize("sections, kfold, problem", [
    ({"split": {**KFOLD["split"], "folds": [0]}}, True, "members: the blend's cross-fitted score needs at least two"),
    ({"pseudo": {"teacher": "c"}}, True, "pseudo.teacher: 'c' is neither `blend` nor a member"),
    ({"pseudo": {"student": "c"}}, True, "pseudo.student: 'c' is not a member"),
    ({"pseudo": {}, "blend": {"method": "stacker"}}, True, "pseudo.teacher: blend needs blend.method: weights"),
])
def test_blend_and_pseudo_label_settings_that_cannot_work_are_refused(sections, kfold, problem):
    problems = members.recipe_problems(blend_recipe(**sections), kfold=kfold)
    assert len(problems) == 1 and problems[0].startswith(problem), problems


def test_members_on_a_single_split_are_scored_side_by_side_and_a_blend_there_is_refused_as_unused():
    """A sweep on fastai's split runs its trials as members: accepted, but nothing blends them, so a `blend:` written
    for such a recipe is refused before anything runs."""
    single = {key: value for key, value in KFOLD.items() if key != "split"} | {"split": {"method": "fastai"}}
    as_written = {**single, "members": {"a": {}, "b": {"seed": 7}}}
    assert members.recipe_problems(with_defaults(as_written), kfold=False) == []
    assert unused_problems(as_written, with_defaults(as_written)) == []
    blended = {**as_written, "blend": {"method": "stacker"}}
    assert [problem.split(":")[0] for problem in unused_problems(blended, with_defaults(blended))] == ["blend"]


def test_a_pseudo_label_round_needs_members():
    """Refused as a section written but unused, before anything asks the recipe for its student (an IndexError)."""
    as_written = {**KFOLD, "pseudo": {}}
    recipe = with_defaults(as_written)
    assert members.recipe_problems(recipe, kfold=True) == []
    assert unused_problems(as_written, recipe) == [
        "pseudo: written, but this run would ignore the whole section: only a K-fold recipe (split.folds) with `members` runs the "
        "pseudo_labels stage that reads it; remove it"]


def test_the_students_are_a_member_no_user_member_can_be_named_like():
    recipe = blend_recipe(pseudo={"teacher": "b"})
    assert members.student(recipe) == "a" and members.student_chain(recipe) == "a-pseudo"
    assert members.teachers(recipe) == ["b"]
    assert members.teachers(blend_recipe(pseudo={})) == ["a", "b"]
    bad_name = {**KFOLD, "members": {"a-pseudo": {}}}
    assert any("members" in problem for problem in recipe_checks.schema_problems(bad_name, SCHEMA))


def test_soft_pseudo_labels_refuse_a_student_recipe_that_mixes():
    mixing = {"finetune": [{**KFOLD["finetune"][0], "regularise": {"mixup_alpha": 0.4}}]}
    recipe = blend_recipe(members={"a": mixing, "b": {}}, pseudo={"mode": "soft"})
    student = with_defaults(members.member_recipe(recipe, "a"))
    problems = members.soft_target_problems(recipe, student)
    assert len(problems) == 1 and "pseudo.mode: soft cannot train the student (a) with finetune[0].regularise" \
        in problems[0]
    threshold = blend_recipe(members={"a": mixing, "b": {}}, pseudo={"mode": "threshold"})
    assert members.soft_target_problems(threshold, student) == []


def test_members_must_agree_on_what_a_rule_declares_once():
    recipe = blend_recipe(members={"a": {}, "b": {"head": {"lr_find": True}}})
    recipes = {name: with_defaults(members.member_recipe(recipe, name)) for name in ("a", "b")}
    problems = members.uniform_problems(recipe, recipes)
    assert len(problems) == 1 and problems[0].startswith("members.b.head.lr_find: True differs")


def test_the_shipped_dog_breed_blend_is_a_valid_recipe_whose_convnext_member_is_the_convnext_recipe():
    """config/dogbreeds_blend.yaml restates config/dogbreeds_convnext.yaml as a member (the data is not here, so the
    workflow cannot plan it): merged like the workflow merges it, it passes every check, and that member trains what
    the ConvNeXt recipe trains."""
    def recipe(*names):
        merged = {}
        for name in names:
            merged = members.merged(merged, yaml.safe_load((REPO / "config" / name).read_text()))
        return merged

    blend = with_defaults(recipe("dogbreeds.yaml", "dogbreeds_kfold.yaml", "dogbreeds_blend.yaml"))
    assert members.override_problems(blend) == [] and members.recipe_problems(blend, kfold=True) == []
    recipes = {name: with_defaults(members.member_recipe(blend, name)) for name in members.names(blend)}
    assert members.uniform_problems(blend, recipes) == []
    convnext = with_defaults(recipe("dogbreeds.yaml", "dogbreeds_convnext.yaml"))
    for key in ("model", "loader", "finetune", "head", "images"):
        assert recipes["convnext"][key] == convnext[key], key
    assert recipes["convnext"]["split"] == blend["split"] and blend["split"]["method"] == "stratified_kfold"
    assert recipes["r34"]["model"]["arch"] == "resnet34"
