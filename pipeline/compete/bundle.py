"""What `snakemake package` writes besides the models: the manifest (how the run made its submission, as data), the
bundle's requirements, its README, and the wheels for a notebook with the internet off. Torch-free.

The manifest's layout (`bundle_version` 1), read by the bundle's predict.py (pipeline/offline/):
    classes        the models' output order (the sorted class names)
    submission     layout (csv / folders), columns (csv: one per class, in sample_submission's order),
                   positive_class (folders: `label` is its probability), clip
    test_images    the suffixes a test image may have, and the decompression-bomb limit (images.max_pixels)
    members        per member (one, without `members`): name, n_aug, fold_average, input (the resize rule, size,
                   interpolation and the TTA views), folds (fold, the class prior of its training rows, its models:
                   the snapshots and the final weights, averaged)
    blend          null, or method weights (space, weights) / stacker (its logistic regression's coefficients)
    calibration    plain_weight, temperature (and which candidate the calibrate stage chose)
    models         per model: file, sha256, bytes, what it was exported from; int8: its quantised twin
"""
from __future__ import annotations

import ast
import csv
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np

from pipeline.offline import images as offline
from pipeline.data.dataset import class_prior, read_split

# What predict.py imports, by distribution name: pinned to the versions that ran the pipeline (Pillow's resize and
# JPEG codec decide the pixels, so the notebook must have the same).
REQUIREMENTS = ("onnxruntime", "numpy", "pillow", "tqdm")


PREDICT_PARTS = ("images.py", "combine.py", "predictor.py")


def predict_script() -> str:
    """predict.py, one file: pipeline/offline/images.py, combine.py and predictor.py in that order, each after
    the first less its docstring, its `from __future__` line and its imports of the parts above it."""
    folder = Path(offline.__file__).parent
    modules = {f"pipeline.offline.{name.removesuffix('.py')}" for name in PREDICT_PARTS}
    script = (folder / PREDICT_PARTS[0]).read_text().rstrip() + "\n"
    for name in PREDICT_PARTS[1:]:
        text = (folder / name).read_text()
        module = ast.parse(text)
        dropped = set()
        for node in module.body:
            is_docstring = node is module.body[0] and isinstance(node, ast.Expr) and isinstance(node.value,
                                                                                                ast.Constant)
            imports_above = isinstance(node, ast.ImportFrom) and node.module in modules | {"__future__"}
            if is_docstring or imports_above:
                dropped.update(range(node.lineno - 1, node.end_lineno))
        kept = [line for number, line in enumerate(text.splitlines(keepends=True)) if number not in dropped]
        script += f"\n\n# --- pipeline/offline/{name} ---\n" + "".join(kept).lstrip("\n").rstrip() + "\n"
    return script


def requirements() -> str:
    return "".join(f"{name}=={metadata.version(name)}\n" for name in REQUIREMENTS)


def model_name(member: str | None, fold: int | None, checkpoint: Path) -> str:
    """models/<member>_fold<k>_<checkpoint>.onnx, each part only where the run has it."""
    parts = ([member] if member else []) + ([f"fold{fold}"] if fold is not None else []) + [checkpoint.stem]
    return "models/" + "_".join(parts) + ".onnx"


def fold_prior(split_csv: str) -> list[float]:
    train, _, classes = read_split(split_csv)
    return class_prior(train, len(classes)).tolist()


def member_input(member: dict, size: int, interpolation: str) -> dict:
    """How a member's models see an image: the cache's resize rule, then its TTA views at the model's size."""
    views = offline.tta_views(member["augmentation"], member["max_zoom"])[:member["n_aug"] + 1]
    return {**member["images"], "size": size, "interpolation": interpolation, "views": views}


def submission_format(plan: dict, classes: list[str]) -> dict:
    """The CSV the run wrote: id plus one column per class in sample_submission's order (sorted without one), or,
    with a positive class, id,label."""
    columns = sorted(classes)
    if plan["sample"] and plan["positive_class"] is None:
        with open(plan["sample"], newline="", encoding="utf-8-sig") as file:
            columns = next(csv.reader(file))[1:]
    return {"layout": plan["layout"], "columns": columns, "positive_class": plan["positive_class"],
            "clip": plan["clip"]}


def blend_entry(weights_report: dict | None) -> dict | None:
    if weights_report is None:
        return None
    if weights_report["method"] == "weights":
        return {"method": "weights", "space": weights_report["space"],
                "weights": [member["weight"] for member in weights_report["members"]]}
    return {"method": "stacker", "stacker": weights_report["stacker"]}


def calibration_entry(report: dict) -> dict:
    return {key: report[key] for key in ("plain_weight", "temperature", "chosen")}


def download_wheels(requirements_txt: Path, destination: Path, platform: str, python: str) -> list[str]:
    """Every wheel the requirements need on `platform` under CPython `python` (pip download, binary only); the
    files fetched. Fails with pip's last line of output."""
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:", "--platform", platform,
               "--python-version", python, "--implementation", "cp", "--dest", str(destination),
               "-r", str(requirements_txt)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        lines = [line for line in (result.stderr + result.stdout).splitlines() if line.strip()]
        raise RuntimeError(f"pip download for {platform}, Python {python} failed: "
                           f"{lines[-1] if lines else 'exit ' + str(result.returncode)}")
    return sorted(path.name for path in destination.glob("*.whl"))


README = """# {title}: an offline inference bundle

Made by `snakemake package` from the run in `{out_dir}`: {what}.
It writes that run's submission for any folder of test images, with no internet, no torch and no pickle: ONNX models
(normalisation inside), this folder's `manifest.json` (classes, the TTA views, fold averaging, blend, calibration)
and `predict.py`.

## In a Kaggle notebook (internet off)

1. Upload this folder as a Kaggle dataset (Datasets -> New dataset -> drop the folder), and add it to the notebook.
2. In the notebook:

```
!pip install --no-index --find-links /kaggle/input/{slug}/wheels -r /kaggle/input/{slug}/requirements.txt
!python /kaggle/input/{slug}/predict.py /kaggle/input/COMPETITION/test \\
    --sample /kaggle/input/COMPETITION/sample_submission.csv --out /kaggle/working/submission.csv
```

{wheels_note}

## Anywhere else

```
python -m venv venv && venv/bin/pip install -r requirements.txt
venv/bin/python predict.py TEST_DIR --out submission.csv [--sample sample_submission.csv] [--threads N] \\
    [--batch-size B] [--workers W] [--models fp32|int8] [--provider auto|cpu|cuda]
```

It prints a progress bar, then images/s and how long 10,000 images would take on that machine. On a GPU, install
`onnxruntime-gpu` of the same version instead of `onnxruntime`: predict.py then runs on CUDA and says so.
An unreadable or empty test image gets the training class prior and one warning line, as in the pipeline.

## What it reproduces

The pipeline's own submission.csv, row for row: same ids and columns, the same top class, every probability within
1e-4 (the run's TTA computed the same views in float32). `manifest.json` says what was checked when the bundle was
made (`checked_against_run`).
{int8_note}"""

WHEELS_PRESENT = ("`wheels/` holds every wheel the requirements need for {platform}, CPython {python}: the notebook "
                  "installs nothing from the internet.")
WHEELS_ABSENT = ("This bundle has no `wheels/` (package.wheels: false): with the internet off, make it again with "
                 "`package: {wheels: true}`, or attach a dataset of those wheels; with it on, drop `--no-index "
                 "--find-links ...`.")


# What the calibrate stage chose, as the bundle's README says it.
CALIBRATION_CHOSEN = {"plain": "submitted as the plain view's probabilities (calibration found TTA did not help)",
                      "tta_mean": "submitted as fastai's TTA mean", "fitted": "calibrated (plain-view weight, temperature)"}


def readme(manifest: dict, title: str, out_dir: str, wheels: dict | None) -> str:
    members, n_models = manifest["members"], len(manifest["models"])
    folds = len(members[0]["folds"])
    what = (f"{n_models} model{'s' if n_models > 1 else ''} ({len(members)} member{'s' if len(members) > 1 else ''} "
            f"x {folds} fold{'s' if folds > 1 else ''}), {len(members[0]['input']['views'])} TTA views each, "
            f"{CALIBRATION_CHOSEN[manifest['calibration']['chosen']]}")
    int8 = manifest.get("int8")
    int8_note = "" if not int8 else (
        f"\n`--models int8` runs the int8 models: {int8['scope']} log loss {int8['int8_logloss']:.4f} against "
        f"{int8['fp32_logloss']:.4f} for fp32 ({int8['int8_images_per_s']:.0f} against "
        f"{int8['fp32_images_per_s']:.0f} images/s where they were measured).\n")
    return README.format(title=title, out_dir=out_dir, what=what,
                         slug=title.lower().replace("_", "-") + "-bundle",
                         wheels_note=WHEELS_PRESENT.format(**wheels) if wheels else WHEELS_ABSENT,
                         int8_note=int8_note)


def compare_submissions(ours: Path, theirs: Path) -> dict:
    """How far one submission CSV is from another: same columns, same ids in the same order, the largest
    probability difference, and the rows whose top class differs (for id,label: which side of 0.5)."""
    import pandas as pd

    mine, reference = (pd.read_csv(path, dtype={"id": str}, keep_default_na=False) for path in (ours, theirs))
    found = {"rows": len(reference), "same_columns": list(mine.columns) == list(reference.columns),
             "same_ids": mine["id"].tolist() == reference["id"].tolist()}
    if not (found["same_columns"] and found["same_ids"]):
        return {**found, "max_difference": float("inf"), "top_class_differs": len(reference)}
    a, b = mine.iloc[:, 1:].to_numpy(dtype=float), reference.iloc[:, 1:].to_numpy(dtype=float)
    top = (lambda values: values[:, 0] > 0.5) if list(reference.columns) == ["id", "label"] else \
        (lambda values: values.argmax(axis=1))
    return {**found, "max_difference": float(np.abs(a - b).max()), "top_class_differs": int((top(a) != top(b)).sum())}


def parity_problem(found: dict) -> str | None:
    """Why `compare_submissions`' figures fall short of the bundle's contract, or None."""
    if not found["same_columns"]:
        return "its columns differ from the run's submission"
    if not found["same_ids"]:
        return "its ids, or their order, differ from the run's submission"
    if found["max_difference"] > found["tolerance"]:
        return f"probabilities differ by up to {found['max_difference']:.2g} (tolerance {found['tolerance']:g})"
    if found["top_class_differs"]:
        return f"the top class differs in {found['top_class_differs']} rows"
    return None
