"""What each stage imports before it does any work: heavy packages load where they are used, not at start-up.

Structural, not timed: each stage module is imported alone in a fresh interpreter and the heavy top-level packages in
its sys.modules must be among those its row of ALLOWED names. A new module-level import of, say, scikit-learn in a
core module fails here, naming the stages it reached and the chain of imports that brought it in.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STAGES = sorted(path.stem for path in (REPO / "pipeline" / "stages").glob("[!_]*.py"))
HEAVY = {"torch", "torchvision", "timm", "sklearn", "scipy", "matplotlib", "mlflow", "onnx", "onnxruntime", "optuna",
         "pandas", "huggingface_hub", "sqlalchemy"}
# pipeline.io and pipeline.data.dataset read and write every stage's tables with pandas: each stage loads it.
EVERY_STAGE = {"pandas"}
# `import torchvision` loads torchvision.ops and through it torch._dynamo (1-1.5 s); these stages cannot do without:
# pipeline.data.transforms (torchvision's transforms v2) and pipeline.models.backbones (torchvision.models) serve
# every run of them. timm is imported only when a timm backbone is built.
IMAGES = {"torch", "torchvision"}
# What each stage may load at start-up besides EVERY_STAGE, and why; a stage without a row loads none of HEAVY.
ALLOWED = {
    "augmentation_preview": IMAGES,  # the training transforms it draws
    "blend": {"sklearn", "scipy"},  # compete.blending fits the weights (scipy) or a stacker (scikit-learn): its work
    "calibrate": {"torch"},  # the temperature's LBFGS fit
    "member_score": {"torch"},  # a trial's score is calibrated as calibrate does it
    "finetune": IMAGES,
    "interpret": IMAGES,  # the validation images through valid_transform
    "lr_find": IMAGES,
    "package": IMAGES,  # the export rebuilds each model
    "precompute": IMAGES,
    "predict": IMAGES,
    "train_head": IMAGES,
    "tta": IMAGES,
}


def loaded_at_import(stage: str) -> tuple[set[str], str]:
    """The top-level packages in sys.modules once pipeline.stages.<stage> is imported, and `-X importtime`'s report."""
    probe = f"import sys, pipeline.stages.{stage}; print(' '.join(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", probe], cwd=REPO, capture_output=True,
                          text=True, check=True)
    return {name.split(".")[0] for name in done.stdout.split()}, done.stderr


def import_chain(importtime_report: str, package: str) -> str:
    """Who imported `package` first: its outermost module and each enclosing import up to the stage. The report lists
    an import after everything it imported, one indent deeper, so the enclosing one is the next shallower line."""
    fields = [line.split("|")[2] for line in importtime_report.splitlines() if line.count("|") == 2]
    names = [(len(field) - len(field.lstrip()), field.strip()) for field in fields]
    start = next((index for index, (_, name) in enumerate(names) if name.split(".")[0] == package), None)
    if start is None:
        return package
    chain, depth = [names[start][1]], names[start][0]
    for indent, name in names[start + 1:]:
        if indent < depth:
            inside_package = name.split(".")[0] == package
            chain = [name] if inside_package else [*chain, name]  # the package's own modules: only its outermost
            depth = indent
    return " <- ".join(chain)


def test_every_row_of_allowed_names_a_stage():
    assert set(ALLOWED) <= set(STAGES), "a row of ALLOWED names a stage that is gone"


@pytest.mark.parametrize("stage", STAGES)
def test_a_stage_loads_only_its_allowed_heavy_packages_at_import(stage):
    loaded, report = loaded_at_import(stage)
    unexpected = sorted(loaded & HEAVY - ALLOWED.get(stage, set()) - EVERY_STAGE)
    chains = "\n".join(f"  {package}: {import_chain(report, package)}" for package in unexpected)
    assert not unexpected, (f"pipeline.stages.{stage} imports {', '.join(unexpected)} at start-up; import it where it "
                            f"is used, or allow it in ALLOWED saying why. Imported first by:\n{chains}")
