"""The schema is the one home of every default: a stage run by hand with a partial `--params` slice runs with the
defaults the workflow's recipe would have given it (pipeline.recipe.defaults, applied by cli.stage_parser)."""
import importlib
import json
import re
from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

from conftest import REPO
from pipeline import cli
from pipeline.recipe import defaults as recipe_defaults
from pipeline.train.fit import FitSpec

SCHEMA = REPO / "config" / "schema.yaml"
# Every stage that parses a recipe slice, with the keys it declares.
STAGES = ["split", "image_stats", "resize", "augmentation_preview", "precompute", "train_head", "lr_find", "finetune",
          "tta", "oof", "calibrate", "interpret", "submission"]


def stage(name):
    return importlib.import_module(f"pipeline.stages.{name}")


def schema_default(section: str, key: str):
    return yaml.safe_load(SCHEMA.read_text())["properties"][section]["properties"][key]["default"]


class Announced(Exception):
    """Raised in place of cli.announce: the params a stage's main() runs with, before it reads any file."""


@pytest.fixture
def announced(monkeypatch):
    def capture(_, params):
        raise Announced(params)

    monkeypatch.setattr(cli, "announce", capture)


def params_of_main(name: str, *args: str, params: dict) -> dict:
    with pytest.raises(Announced) as seen:
        stage(name).main([*args, "--params", json.dumps(params)])
    return seen.value.args[0]


def test_a_stage_run_by_hand_without_weights_or_num_workers_gets_the_schemas(announced, tmp_path):
    paths = ["--split-csv", "s.csv", "--test-csv", "t.csv", "--cache-dir", "c", "--out-dir", str(tmp_path)]
    params = params_of_main("precompute", *paths, params={"arch": "resnet18", "size": 32})
    assert params["weights"] == schema_default("model", "weights") == "imagenet"
    assert params["num_workers"] == schema_default("loader", "num_workers") == 2
    assert params["seed"] == 42 and params["arch"] == "resnet18" and params["size"] == 32


def test_the_head_stage_gets_every_default_of_its_sections_and_keeps_what_it_is_given(announced, tmp_path):
    given = {"arch": "resnet18", "size": 32, "precomputed": [{"lr": 0.01, "n_cycle": 1}], "num_workers": 0,
             "preprocessing": {"mean": [0.5] * 3}, "weights_digest": "abc"}
    paths = ["--split-csv", "s.csv", "--activations", "a", "--cache-dir", "c", "--out-dir", str(tmp_path)]
    params = params_of_main("train_head", *paths, params=given)
    assert params["weights"] == "imagenet" and params["lr_find"] is True and params["warmup"] is True
    assert params["num_workers"] == 0  # given, so kept
    assert params["precomputed"] == [{"lr": 0.01, "n_cycle": 1, "cycle_len": None, "cycle_mult": 1}]  # a fit's too
    # Keys the schema does not know (derived values the workflow passes) go through as they are.
    assert params["preprocessing"] == {"mean": [0.5] * 3} and params["weights_digest"] == "abc"
    # What the stage hashes for its resume key and checkpoint: the slice as given.
    assert params.as_passed == given


def workflow_recipe() -> dict:
    """A minimal recipe with the defaults Snakemake's validate fills in, as rules/recipe.smk has it."""
    recipe = {"data_dir": "data", "out_dir": "out", "data": {"layout": "csv"}, "model": {"arch": "resnet18"},
              "head": {"size": 32, "precomputed": [{"lr": 0.01, "n_cycle": 1}]},
              "finetune": [{"size": 40, "fits": [{"lr": 0.01, "n_cycle": 1}]}]}
    validate(recipe, str(SCHEMA))
    return recipe


def recipe_values(recipe: dict, name: str) -> dict:
    """The flat keys a declared name stands for, with their values in the recipe."""
    section, _, key = name.partition(".")
    value = recipe.get(section, {})
    value = value[0] if isinstance(value, list) else value
    if key:
        return {key: value[key]} if key in value else {}
    return value if isinstance(value, dict) else {section: value}


@pytest.mark.parametrize("name", STAGES)
def test_each_stage_s_defaults_are_those_the_workflow_s_recipe_gets(name):
    keys = stage(name).RECIPE_KEYS
    recipe = workflow_recipe()
    from_recipe = {flat: value for declared in keys for flat, value in recipe_values(recipe, declared).items()}
    filled = cli.stage_parser(None, keys).parse_args([]).params
    assert filled and filled == {flat: from_recipe[flat] for flat in filled}


def test_a_key_no_declaration_names_is_neither_filled_nor_touched_nor_read():
    parser = cli.stage_parser(None, stage("tta").RECIPE_KEYS, stage("tta").WORKFLOW_KEYS)
    params = parser.parse_args(["--params", '{"clip": 0.3, "images": {"shorter_side": 40}}']).params
    passed = dict(params)
    assert passed["clip"] == 0.3 and passed["images"] == {"shorter_side": 40}  # submission's key, a derived one
    assert "weights" not in passed and "lr_find" not in passed  # not tta's keys: no default either
    for undeclared in ("clip", "images"):  # a stage reading what it did not declare is a bug in the stage
        with pytest.raises(KeyError, match=f"reads '{undeclared}', which its RECIPE_KEYS / WORKFLOW_KEYS"):
            params[undeclared]
    assert params.get("preprocessing") is None  # declared by the stage, derived by the workflow: no default


@pytest.mark.parametrize("names, message", [
    (("seed", "split"), "'seed' is declared by both 'seed' and 'split'"),
    (("head", "finetune.size"), "'size' is declared by both 'head' and 'finetune.size'"),
    (("head", "finetune"), "declared by both 'head' and 'finetune'"),  # size, and lr_find: true in one, false in one
    (("model.weight",), "the schema's 'model' has no key 'weight'"),
    (("loaders",), "the schema has no top-level key 'loaders'"),
])
def test_an_ambiguous_or_unknown_declaration_is_refused_before_any_argument_is_read(names, message):
    with pytest.raises(recipe_defaults.DeclarationError, match=re.escape(message)):
        cli.stage_parser(None, names)


def test_a_required_key_the_slice_lacks_stops_the_stage_with_one_line_naming_it(tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:  # the preview's size: no default (it is the head's, or derived)
        stage("augmentation_preview").main(["--cache-dir", str(tmp_path), "--out", str(tmp_path / "p.png"),
                                            "--params", "{}"])
    assert stopped.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: --params has no 'size'"), err


def test_a_value_the_schema_refuses_is_an_argument_error_naming_its_key(capsys):
    with pytest.raises(SystemExit) as stopped:
        cli.stage_parser(None, ("loader",)).parse_args(["--params", '{"num_workers": -1}'])
    assert stopped.value.code == 2
    assert "argument --params: num_workers: -1 is less than the minimum of 0" in capsys.readouterr().err


def test_no_stage_or_core_module_keeps_a_default_of_its_own_for_a_schema_key():
    top_level = yaml.safe_load(SCHEMA.read_text())["properties"]
    known = {key for name in top_level for key in recipe_defaults.declared_keys((name,))}  # every flat key there is
    fallbacks = [f"{path.name}: params.get({key!r}, ...)" for path in sorted((REPO / "pipeline").rglob("*.py"))
                 for key in re.findall(r"params\.get\(\s*[\"'](\w+)[\"']\s*,", path.read_text()) if key in known]
    assert fallbacks == []


def test_a_fit_gets_the_schemas_defaults_for_what_it_omits_and_a_bad_value_names_its_key():
    fit = yaml.safe_load(SCHEMA.read_text())["$defs"]["fit"]["properties"]
    spec = FitSpec.from_config({"lr": 0.1, "n_cycle": 2})
    assert (spec.cycle_len, spec.cycle_mult) == (fit["cycle_len"]["default"], fit["cycle_mult"]["default"]) == (None, 1)
    with pytest.raises(recipe_defaults.InvalidParams, match=r"cycle_mult: 0 is less than the minimum of 1"):
        FitSpec.from_config({"lr": 0.1, "n_cycle": 2, "cycle_len": 1, "cycle_mult": 0})
