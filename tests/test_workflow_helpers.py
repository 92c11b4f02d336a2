"""The plain Python the rules are built from (pipeline/workflow/): each rule's slice from its stage's declaration, one
model's chain of paths, command-line flags. No Snakemake run: what the rules do with them is the workflow tests' job."""
import copy
import json
import shlex

import pytest
import yaml
from snakemake.persistence import UNREPRESENTABLE, PersistenceBase
from snakemake.utils import validate

from conftest import CONFIGS, REPO
from pipeline.recipe import defaults as recipe_defaults
from pipeline.workflow import slices
from pipeline.workflow.chain import Chain, share_work, snapshot_cycles
from pipeline.workflow.flags import ShellText, flags

SLICED_STAGES = sorted(path.stem for path in (REPO / "pipeline" / "stages").glob("[!_]*.py")
                       if "RECIPE_KEYS = " in path.read_text())
BACKBONE = {"weights_digest": "abc", "preprocessing": {"mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bicubic"}}


@pytest.fixture(scope="module")
def recipe() -> dict:
    """The tiny test recipe with the schema's defaults filled in, as the Snakefile sees it."""
    loaded = yaml.safe_load((CONFIGS / "tiny_csv.yaml").read_text())
    validate(loaded, str(REPO / "config" / "schema.yaml"))
    return loaded


@pytest.mark.parametrize("stage", SLICED_STAGES)
def test_the_declaration_the_rules_read_is_the_one_the_stage_runs_with(stage):
    module = __import__(f"pipeline.stages.{stage}", fromlist=["RECIPE_KEYS"])
    declared = slices.declaration(stage)
    assert declared.recipe_keys == module.RECIPE_KEYS
    assert declared.workflow_keys == getattr(module, "WORKFLOW_KEYS", ())
    recipe_defaults.declared_keys(declared.recipe_keys)  # names the schema has, no flat key twice


def test_a_slice_holds_the_declared_keys_with_the_recipes_values_and_what_the_workflow_adds(recipe):
    built = json.loads(slices.stage_slice("tta", recipe, preprocessing=BACKBONE["preprocessing"]))
    expected = {"seed": recipe["seed"], "device": recipe["device"], "amp": recipe["amp"],
                "arch": recipe["model"]["arch"], **recipe["tta"], **recipe["transforms"], **recipe["loader"],
                "preprocessing": BACKBONE["preprocessing"]}
    assert built == expected


def test_a_section_can_stand_in_for_the_recipes_and_a_given_value_for_a_declared_key(recipe):
    step = {key: value for key, value in recipe["finetune"][1].items() if key != "lr_find"}
    built = json.loads(slices.stage_slice("lr_find", recipe, sections={"finetune": step}, lr=0.5,
                                          preprocessing=None))
    assert (built["size"], built["unfreeze"], built["lr"]) == (step["size"], step["unfreeze"], 0.5)
    assert json.loads(slices.stage_slice("resize", recipe, shorter_side=77))["shorter_side"] == 77


def test_a_rule_passing_what_its_stage_does_not_declare_stops_the_plan(recipe):
    with pytest.raises(slices.SliceError, match=r"the tta rule passes \['weights_digest'\], which "
                                                r"pipeline/stages/tta.py does not declare"):
        slices.stage_slice("tta", recipe, preprocessing=None, weights_digest="abc")


def test_a_slice_is_canonical_json_so_equal_recipes_give_equal_text(recipe):
    shuffled = copy.deepcopy(recipe)
    shuffled["loader"] = dict(reversed(list(recipe["loader"].items())))
    assert slices.stage_slice("precompute", recipe, **BACKBONE) == slices.stage_slice("precompute", shuffled,
                                                                                        **BACKBONE)


def chain_of(recipe, devices=1, model_dir="out/folds/{fold}") -> Chain:
    return Chain(recipe, BACKBONE, "out", model_dir, devices)


def test_a_chain_names_each_sizes_checkpoints_in_order(recipe):
    chain = chain_of(recipe)
    names = chain.finetune_names()
    assert names == [f"{index}_{step['size']}" for index, step in enumerate(recipe["finetune"], start=1)]
    assert chain.previous_checkpoint(names[0]) == "out/folds/{fold}/head/model.pt"
    assert chain.previous_checkpoint(names[1]) == f"out/folds/{{fold}}/finetune/{names[0]}/model.pt"
    assert chain.final_checkpoint() == f"out/folds/{{fold}}/finetune/{names[-1]}/model.pt"
    assert chain.resized == f"out/resized/{recipe['images']['shorter_side']}"
    no_finetune = chain_of({**recipe, "finetune": []})
    assert no_finetune.final_checkpoint() == "out/folds/{fold}/head/model.pt"
    assert no_finetune.tta_checkpoints() == ["out/folds/{fold}/head/model.pt"]


def test_tta_averages_the_last_sizes_kept_snapshots_then_its_final_weights(recipe):
    last = {**recipe["finetune"][-1], "snapshots": 3,
            "fits": [{"lr": 0.01, "n_cycle": 4, "cycle_len": 1, "cycle_mult": 1}]}
    chain = chain_of({**recipe, "finetune": [*recipe["finetune"][:-1], last]})
    name = chain.finetune_names()[-1]
    assert snapshot_cycles(last) == [2, 3]  # the 4th cycle's end is model.pt itself
    assert chain.tta_checkpoints() == [f"out/folds/{{fold}}/finetune/{name}/snapshots/cycle_{cycle}.pt"
                                       for cycle in (2, 3)] + [chain.final_checkpoint()]


def test_data_parallel_training_is_part_of_the_training_slices_only_when_used(recipe):
    single, parallel = chain_of(recipe), chain_of(recipe, devices=2)
    assert "devices" not in json.loads(single.training_slice("train_head", **single.weights))
    assert json.loads(parallel.training_slice("train_head", **parallel.weights))["devices"] == 2
    assert json.loads(parallel.training_slice("train_head", **parallel.weights))["images"] == parallel.resize_rule


def test_flags_quote_each_value_and_leave_out_what_is_not_there():
    assert flags(snapshots=["a b.pt", "c.pt"], cv_metrics_in="x/y.json") == "--snapshots 'a b.pt' c.pt " \
                                                                           "--cv-metrics-in x/y.json"
    assert flags(snapshots=[], sample=None) == ""
    assert shlex.split(flags(classes=["it's", "$HOME"])) == ["--classes", "it's", "$HOME"]


def test_shell_text_formats_as_it_is_and_is_no_param_snakemake_compares():
    text = ShellText("PYTHONPATH=/a/b${PYTHONPATH:+:$PYTHONPATH} /venv/bin/python")
    assert "{params.run} -m x".format(params=type("P", (), {"run": text})) == f"{text.text} -m x"
    assert PersistenceBase._serialize_param_builtin(None, text) is UNREPRESENTABLE
    assert PersistenceBase._serialize_param_builtin(None, text.text) is not UNREPRESENTABLE


def test_a_key_the_stage_reads_only_under_another_keys_value_is_left_out_otherwise(recipe):
    fastai = json.loads(slices.stage_slice("split", {**recipe, "split": {**recipe["split"], "method": "fastai"}}))
    kfold = json.loads(slices.stage_slice("split", {**recipe, "split": {**recipe["split"],
                                                                         "method": "stratified_kfold"}}))
    assert {"val_pct", "cv_idx"} <= fastai.keys() and not {"n_folds", "fold"} & fastai.keys()
    assert {"n_folds", "fold"} <= kfold.keys() and not {"val_pct", "cv_idx"} & kfold.keys()
    weights = json.loads(slices.stage_slice("blend", {**recipe, "blend": {**recipe["blend"], "method": "weights"}}))
    stacker = json.loads(slices.stage_slice("blend", {**recipe, "blend": {**recipe["blend"], "method": "stacker"}}))
    assert not {"seed", "stacker_c"} & weights.keys() and {"seed", "stacker_c"} <= stacker.keys()


def test_members_share_each_stage_up_to_where_their_chains_first_differ(recipe):
    """share_work: a later member reads a stage's files from the first member with the same chain up to it; the
    pseudo-label students (apart) train on splits of their own and share nothing."""
    later_lr = copy.deepcopy(recipe["finetune"])
    later_lr[-1]["fits"][0]["lr"] = 1.0e-4
    recipes = {"a": recipe, "b": {**recipe, "finetune": later_lr}, "d": {**recipe, "seed": 7}, "a-pseudo": recipe,
               "c": {**recipe, "tta": {**recipe["tta"], "n_aug": 1}}}
    chains = {name: Chain(r, BACKBONE, "out", "out/members/{member}/folds/{fold}", 1, name)
              for name, r in recipes.items()}
    share_work(chains, apart=("a-pseudo",))
    first, last = chains["b"].finetune_names()[0], chains["b"].finetune_names()[-1]
    assert chains["b"].previous_checkpoint(last) == f"out/members/a/folds/{{fold}}/finetune/{first}/model.pt"
    assert chains["b"].final_checkpoint() == f"out/members/b/folds/{{fold}}/finetune/{last}/model.pt"
    assert chains["c"].final_checkpoint() == chains["a"].final_checkpoint()
    assert chains["c"].path("tta/valid_passes.npy") == "out/members/c/folds/{fold}/tta/valid_passes.npy"
    assert chains["d"].activations == "out/members/d/folds/{fold}/activations/" + str(recipe["head"]["size"])
    assert chains["a-pseudo"].activations.startswith("out/members/a-pseudo/")
    assert chains["a-pseudo"].final_checkpoint().startswith("out/members/a-pseudo/")
