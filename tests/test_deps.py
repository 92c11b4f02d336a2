"""The layout rule (stages in pipeline/stages/, importing only the core) and the code inputs each rule gets from it."""
import re

import pytest

from conftest import REPO
from pipeline import deps

STAGES_DIR = REPO / "pipeline" / "stages"
STAGES = sorted(path.stem for path in STAGES_DIR.glob("[!_]*.py"))
CORE = sorted(path.stem for path in (REPO / "pipeline").glob("[!_]*.py"))
# The core's commands a person runs beside the workflow, never a rule (`python -m pipeline.compare`), and the
# bundle's predict.py (pipeline.offline_predict, written into every bundle after pipeline.offline).
COMMANDS = ["compare", "offline_predict"]


def test_a_stages_code_is_its_module_its_packages_and_every_core_module_it_imports_transitively():
    files = {path.removeprefix(f"{REPO}/") for path in deps.module_files("pipeline.stages.tta")}
    assert {"pipeline/__init__.py", "pipeline/stages/__init__.py", "pipeline/stages/tta.py",
            "pipeline/inference.py",  # imported by tta
            "pipeline/loaders.py", "pipeline/transforms.py"} <= files  # imported by inference, not by tta
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


def test_no_stage_imports_another_stage_and_the_core_imports_none():
    imports = {f"pipeline.stages.{stage}": deps._imported_names(f"pipeline.stages.{stage}") for stage in STAGES}
    imports.update({f"pipeline.{module}": deps._imported_names(f"pipeline.{module}") for module in CORE})
    crossing = {module: sorted(name for name in names if name.startswith("pipeline.stages."))
                for module, names in imports.items()}
    assert {module: names for module, names in crossing.items() if names} == {}
    with_main = [module for module in CORE if "def main(" in (REPO / "pipeline" / f"{module}.py").read_text()]
    assert with_main == COMMANDS


def test_every_rule_runs_the_stage_named_like_it_and_every_stage_but_predict_has_a_rule():
    rules = {}
    for smk in sorted((REPO / "rules").glob("*.smk")):
        for rule, body in re.findall(r"^\s*rule (\w+):\n(.*?)(?=^\s*rule \w+:|\Z)", smk.read_text(), re.M | re.S):
            rules[rule] = (re.findall(r'stage_shell\(\s*"(\w+)"', body), re.findall(r'code=code\("(\w+)"\)', body))
    assert {rule: used for rule, used in rules.items() if used != ([rule], [rule])} == {}
    assert sorted(rules) == sorted(set(STAGES) - {"predict"})
