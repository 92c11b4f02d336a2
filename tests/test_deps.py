"""The layout (the core's subpackages in layers, stages on top, importing only the core) and the code inputs each
rule gets from it."""
import re
import subprocess
import sys

import pytest

from conftest import REPO, unread_params
from pipeline.workflow import deps

STAGES_DIR = REPO / "pipeline" / "stages"
STAGES = sorted(path.stem for path in STAGES_DIR.glob("[!_]*.py"))
MODULES = sorted(".".join(path.relative_to(REPO).with_suffix("").parts)
                 for path in (REPO / "pipeline").rglob("[!_]*.py"))
CORE = [module for module in MODULES if not module.startswith("pipeline.stages.")]
# The core's commands a person runs beside the workflow, never a rule (`python -m pipeline.compare`, `python -m
# pipeline.sweep`), and the bundle's predict.py (pipeline.offline.predictor, written into every bundle after the rest
# of pipeline.offline.images).
COMMANDS = ["pipeline.compare", "pipeline.offline.predictor", "pipeline.sweep.command"]
# docs/development.md's map: a module imports from its own folder and from the layers below its folder's, never up.
LAYERS = [{"io", "offline"}, {"data", "report"}, {"recipe"}, {"cli"}, {"compute"}, {"models"}, {"train"},
          {"predict", "compete", "tracking"}, {"workflow"}, {"stages", "compare", "sweep"}]


def folder(module: str) -> str:
    """pipeline.data.dataset -> data; pipeline.io -> io."""
    return module.split(".")[1]


def layer(module: str) -> int:
    return next(index for index, names in enumerate(LAYERS) if folder(module) in names)


def module_imports() -> dict[str, set[str]]:
    """Every module's imports of other pipeline modules (lazy ones too), packages left out."""
    return {module: {name for name in deps._imported_names(module) if not deps.is_package(name)}
            for module in MODULES}


def test_the_map_places_every_folder_of_the_core():
    assert {folder(module) for module in MODULES} == set().union(*LAYERS)


def test_imports_go_down_the_layers_only():
    upward = sorted(f"{module} -> {name}" for module, names in module_imports().items() for name in names
                    if folder(name) != folder(module) and layer(name) >= layer(module))
    assert upward == []


def test_no_module_imports_itself_back_through_others():
    imports, cycles = module_imports(), []

    def visit(module, path):
        for name in sorted(imports[module]):
            if name in path:
                cycles.append(" -> ".join(path[path.index(name):] + [name]))
            elif name not in done:
                visit(name, path + [name])
        done.add(module)

    done = set()
    for module in MODULES:
        visit(module, [module])
    assert cycles == []


def test_no_stage_imports_another_stage_and_the_core_imports_none():
    crossing = {module: sorted(name for name in names if name.startswith("pipeline.stages."))
                for module, names in module_imports().items()}
    assert {module: names for module, names in crossing.items() if names} == {}
    with_main = [module for module in CORE if "def main(" in deps.module_path(module).read_text()]
    assert with_main == COMMANDS


def test_what_the_snakefile_imports_at_plan_time_imports_no_torch():
    """Planning (`snakemake -n`) must stay fast: torch, scikit-learn, matplotlib and MLflow load only in jobs."""
    planned = sorted({line for smk in (REPO / "rules").glob("*.smk")
                      for line in re.findall(r"^from pipeline[\w.]* import .*$", smk.read_text(), re.M)})
    assert "from pipeline.workflow import recipe_check" in planned  # the whole plan-time check, data and backbone
    heavy = ["torch", "torchvision", "timm", "sklearn", "matplotlib", "mlflow", "onnxruntime"]
    probe = "\n".join(["import sys", *planned, f"print(sorted(set(sys.modules) & {set(heavy)!r}))"])
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, check=True)
    assert loaded.stdout.strip() == "[]"


def test_a_stages_code_is_its_module_its_packages_and_every_core_module_it_imports_transitively():
    files = {path.removeprefix(f"{REPO}/") for path in deps.module_files("pipeline.stages.tta")}
    assert {"pipeline/__init__.py", "pipeline/stages/__init__.py", "pipeline/stages/tta.py",
            "pipeline/predict/inference.py",  # imported by tta
            "pipeline/train/loaders.py", "pipeline/data/transforms.py"} <= files  # imported by inference, not tta
    assert not {f"pipeline/stages/{stage}.py" for stage in STAGES if stage != "tta"} & files


@pytest.mark.parametrize("source, named", [
    ("from pipeline import no_such_module\n", "pipeline.no_such_module"),
    ("from pipeline.no_such_module import helper\n", "pipeline.no_such_module"),
    ("import pipeline.stages.gone\n", "pipeline.stages.gone"),
])
def test_an_import_of_a_module_that_is_not_there_fails_naming_it(tmp_path, monkeypatch, source, named):
    package = tmp_path / "pipeline"
    (package / "stages").mkdir(parents=True)
    for init in (package / "__init__.py", package / "stages" / "__init__.py"):
        init.write_text('"""a package"""\n')
    (package / "stages" / "broken.py").write_text(source)
    monkeypatch.setattr(deps, "PACKAGE_DIR", package)
    deps._imports.cache_clear()
    try:
        with pytest.raises(deps.UnknownModule, match=re.escape(named)):
            deps.module_files("pipeline.stages.broken")
    finally:
        deps._imports.cache_clear()


def test_every_rule_runs_the_stage_named_like_it_and_every_stage_but_predict_has_a_rule():
    rules = {}
    for smk in sorted((REPO / "rules").glob("*.smk")):
        for rule, body in re.findall(r"^\s*rule (\w+):\n(.*?)(?=^\s*rule \w+:|\Z)", smk.read_text(), re.M | re.S):
            rules[rule] = (re.findall(r'stage_shell\(\s*"(\w+)"', body), re.findall(r'code=code\("(\w+)"\)', body))
    assert {rule: used for rule, used in rules.items() if used != ([rule], [rule])} == {}
    assert sorted(rules) == sorted(set(STAGES) - {"predict"})


# ------------------------------------------------- each rule passes what its stage reads (pipeline.workflow.slices)
# A stage reading a key it did not declare stops (pipeline.cli.StageParams); these say the other way round: every key
# a rule passes is read by its stage, in the suite's own runs of each kind.

@pytest.mark.workflow
def test_the_single_split_stages_read_every_key_their_rules_pass(csv_run):
    unread = unread_params(csv_run[1])
    assert {"pipeline.stages.train_head", "pipeline.stages.finetune", "pipeline.stages.tta",
            "pipeline.stages.submission"} <= unread.keys()
    assert {stage: keys for stage, keys in unread.items() if keys} == {}


@pytest.mark.workflow
def test_the_kfold_stages_read_every_key_their_rules_pass(kfold_run):
    unread = unread_params(kfold_run)
    assert {"pipeline.stages.oof", "pipeline.stages.calibrate"} <= unread.keys()
    assert {stage: keys for stage, keys in unread.items() if keys} == {}


@pytest.mark.workflow
def test_the_blend_stages_read_every_key_their_rules_pass(blend_run):
    unread = unread_params(blend_run)
    assert {"pipeline.stages.blend", "pipeline.stages.pseudo_labels"} <= unread.keys()
    assert {stage: keys for stage, keys in unread.items() if keys} == {}
