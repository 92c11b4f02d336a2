"""The checks a recipe and its data pass before any job is planned, in plain Python (rules/recipe.smk calls them).

Each returns a list of problems, every one naming the key, file or row and what to do; an empty list is a pass.
`schema_problems` runs on the recipe as written; the others on the recipe with the schema's defaults filled in.
"""
from __future__ import annotations

import difflib
import re
from pathlib import Path

import pandas as pd
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match

from pipeline.offline import images as offline
from pipeline.data.dataset import (DataError, DataScan, image_files, read_labeled, sample_classes, scan_data,
                                   summarise)
from pipeline.data.demo_folder import default_classes

# How each JSON-schema constraint reads as an instruction.
CONSTRAINTS = {
    "minimum": "must be >= {}",
    "exclusiveMinimum": "must be > {}",
    "maximum": "must be <= {}",
    "exclusiveMaximum": "must be < {}",
    "minItems": "needs at least {} items",
    "maxItems": "takes at most {} items",
    "minLength": "must not be empty",
    "enum": "must be one of {}",
    "const": "must be {!r}",
    "pattern": "must match {}",
    "uniqueItems": "must not repeat an item",
}


def key_path(path) -> str:
    """['finetune', 0, 'fits', 1, 'lr'] -> 'finetune[0].fits[1].lr'."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "top level"


def as_written(value) -> str:
    """A value as the message shows it, with the YAML pitfall behind most string-for-number errors spelt out."""
    if isinstance(value, str) and (bare := re.fullmatch(r"([+-]?\d+)[eE]([+-]?\d+)", value.strip())):
        return f"{value!r}, a string: YAML 1.1 reads a bare {value} as text, write {bare[1]}.0e{bare[2]}"
    return repr(value)


def describe_error(error: ValidationError) -> str:
    """One schema error as 'key: what it must be (it is ...)', never the schema itself."""
    where = key_path(error.absolute_path)
    if error.validator == "additionalProperties":
        known = sorted(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(known))
        hints = [f"{key!r} (did you mean {close[0]!r}?)" if (close := difflib.get_close_matches(key, known, 1))
                 else repr(key) for key in unknown]
        return f"{where}: unknown key {', '.join(hints)}; known keys: {', '.join(known)}"
    if error.validator == "required":
        return f"{where}: {error.message.split(' is a required')[0]} is required"
    if error.validator in ("oneOf", "anyOf") and all(branch.validator == "type" for branch in error.context):
        kinds = [branch.validator_value for branch in error.context]
        wanted = " or ".join(f"a list of them" if kind == "array" else f"a {kind}" for kind in kinds)
        return f"{where}: must be {wanted} (it is {as_written(error.instance)})"
    if error.validator == "type":
        return f"{where}: must be of type {error.validator_value} (it is {as_written(error.instance)})"
    if error.validator in CONSTRAINTS:
        return f"{where}: {CONSTRAINTS[error.validator].format(error.validator_value)} (it is {error.instance!r})"
    return f"{where}: {error.message}"


def schema_problems(recipe: dict, schema: dict) -> list[str]:
    """Every schema violation, each reduced to its most specific cause (inside a oneOf, the branch that fits best)."""
    errors = Draft202012Validator(schema).iter_errors(recipe)
    return [describe_error(best_match([error])) for error in sorted(errors, key=lambda e: list(map(str, e.path)))]


def finetune_problems(config: dict) -> list[str]:
    """Progressive sizes grow, never past the resize cache; snapshots only where TTA reads them (the last size)."""
    problems = []
    shorter_side = config["images"]["shorter_side"]
    sizes = [("head.size", config["head"]["size"])] + [
        (f"finetune[{index}].size", step["size"]) for index, step in enumerate(config["finetune"])]
    for (_, previous), (key, size) in zip(sizes, sizes[1:]):
        if size < previous:
            problems.append(f"{key} {size} is smaller than the size before it ({previous}): progressive resizing goes "
                            "from small to large, list the sizes in increasing order")
    # The lesson trains one size frozen, then unfrozen: two entries. The same size twice alike is one entry split.
    phases = [(step["size"], step["unfreeze"], step["bn_freeze"]) for step in config["finetune"]]
    if repeated := sorted({phase[0] for phase in phases if phases.count(phase) > 1}):
        problems.append(f"finetune: size {', '.join(map(str, repeated))} listed more than once with the same "
                        "unfreeze and bn_freeze; merge its fits into one entry")
    for key, size in sizes:
        if size > shorter_side:
            problems.append(f"{key} {size} is larger than images.shorter_side {shorter_side}: every image would be "
                            f"upscaled from the resize cache; raise shorter_side to at least {size}")
    for index, step in enumerate(config["finetune"]):
        k, last_fit = step.get("snapshots", 1), step["fits"][-1]
        if k > 1 and index != len(config["finetune"]) - 1:
            problems.append(f"finetune[{index}].snapshots: {k} on size {step['size']}, which is not the last size; "
                            "TTA averages the last size's snapshots only, so move it there")
        elif k > 1 and (not last_fit.get("cycle_len") or k > last_fit["n_cycle"]):
            problems.append(f"finetune[{index}].snapshots: {k} needs a last fit with cycle_len and at least {k} "
                            f"cycles (n_cycle); it has {last_fit}")
        if step["bn_freeze"] and config["train"]["train_bn"]:
            problems.append(f"finetune[{index}].bn_freeze keeps the body's BatchNorm statistics as pretrained, while "
                            "train.train_bn trains them: choose one")
    return problems


def regularise_problems(config: dict, backbone: dict) -> list[str]:
    """Regularisers the backbone cannot take: stochastic depth needs residual blocks with a drop-path layer, which the
    backbone check counted on the built model (`backbone["drop_path_blocks"]`)."""
    sections = [("head.regularise", config["head"]["regularise"])]
    sections += [(f"finetune[{index}].regularise", step["regularise"]) for index, step in enumerate(config["finetune"])]
    return [f"{key}.drop_path: {section['drop_path']} needs residual blocks with a drop-path layer (timm's "
            f"EfficientNets, MobileNets, ResNets, ...); {config['model']['arch']} ({backbone['source']}) has none: "
            "set it to 0" for key, section in sections if section["drop_path"] and not backbone["drop_path_blocks"]]


def tta_problems(config: dict) -> list[str]:
    """Deterministic TTA has a fixed number of distinct views; asking for more would repeat one silently."""
    tta, transforms = config["tta"], config["transforms"]
    if tta["mode"] != "deterministic":
        return []
    available = len(offline.tta_views(transforms["augmentation"], transforms["max_zoom"])) - 1
    if tta["n_aug"] <= available:
        return []
    return [f"tta.n_aug {tta['n_aug']} with tta.mode deterministic: transforms.augmentation "
            f"{transforms['augmentation']} and max_zoom {transforms['max_zoom']} give {available} views besides the "
            f"plain one; lower n_aug, raise max_zoom above 1, or use an augmentation with flips (side_on, top_down)"]


def runtime_problems(config: dict) -> list[str]:
    problems = []
    devices = config["devices"]
    if devices > 1 and config["device"].startswith("cuda:"):
        problems.append(f"devices: {devices} needs device auto or cuda (each process claims its own GPU), not "
                        f"{config['device']!r}")
    if config["loader"]["batch_size"] % devices:
        problems.append(f"loader.batch_size {config['loader']['batch_size']} does not split evenly over devices: "
                        f"{devices} (each process loads batch_size / devices images)")
    return problems


def out_dir_problems(config: dict) -> list[str]:
    out_dir = Path(config["out_dir"])
    if out_dir.exists() and not out_dir.is_dir():
        return [f"out_dir {out_dir} is a file, not a folder; give the recipe a folder for its outputs"]
    return []


def kfold_folds(config: dict) -> tuple[list[int], list[str]]:
    """The folds a K-fold recipe runs (`split.folds`; [] for a single split), and the problems with them."""
    split = config["split"]
    if "folds" not in split:
        return [], []
    if split["method"] != "stratified_kfold" or config["data"]["layout"] != "csv":
        return [], ["split.folds needs split.method: stratified_kfold and the csv data layout (fastai's split and the "
                    f"folder layout's valid/ are one fixed validation set); this recipe has method {split['method']!r}, "
                    f"layout {config['data']['layout']!r}"]
    n_folds = split["n_folds"]
    folds = list(range(n_folds)) if split["folds"] == "all" else sorted(split["folds"])
    if out_of_range := [fold for fold in folds if fold >= n_folds]:
        return [], [f"split.folds {out_of_range} out of range: n_folds is {n_folds} (folds 0..{n_folds - 1})"]
    return folds, []


def labelled_images(config: dict, sample: Path | None) -> pd.DataFrame:
    """A user's labelled images (id, label, path), read as the split stage reads them, with the sample submission's
    classes (raises DataError naming the file or row)."""
    data = config["data"]
    named = sample_classes(sample) if sample is not None and data["layout"] == "csv" else ()
    return read_labeled(config["data_dir"], data["layout"], data["suffix"], named)


def empty_image_problems(config: dict, labelled: pd.DataFrame, scan: DataScan) -> list[str]:
    """Zero-byte files among the images the first job decodes (the labelled ones and test/'s): known from the data
    scan already, so they stop planning instead of that job. With on_bad_image: skip that job lists and skips them."""
    if config["images"]["on_bad_image"] == "skip":
        return []
    read = list(labelled["path"]) + [f"test/{image.name}" for image in image_files(Path(config["data_dir"]) / "test")]
    empty = [path for path in read if path in scan.empty_files]
    if not empty:
        return []
    files = f"{len(empty)} empty image file{'s' if len(empty) > 1 else ''} (0 bytes)"
    return [f"{config['data_dir']}: {files}, which no stage can read: {summarise(empty)}; replace or remove them, or "
            "set images.on_bad_image: skip to leave them out (an empty test image then keeps its row in the "
            "submission, with the training class prior)"]


def class_problems(classes: list[str], config: dict, sample_path: Path | None) -> list[str]:
    """Enough classes, positive_class among them, and the sample submission's columns naming the same ones."""
    problems, positive = [], config["data"]["positive_class"]
    if len(classes) < 2:
        problems.append(f"{config['data_dir']}: only one class ({', '.join(classes)}); a classifier needs at "
                        "least two")
    if positive is not None and positive not in classes:
        close = difflib.get_close_matches(positive, classes, 1)
        problems.append(f"data.positive_class {positive!r} is not one of the classes {classes}"
                        + (f" (did you mean {close[0]!r}?)" if close else ""))
    if sample_path is None:
        return problems
    columns = list(pd.read_csv(sample_path, nrows=0, encoding="utf-8-sig").columns)
    if positive is not None:
        if columns != ["id", "label"]:
            problems.append(f"{sample_path}: a binary submission (positive_class set) needs columns id,label; "
                            f"found {columns}")
    elif set(columns[1:]) != set(classes):
        problems.append(f"{sample_path}: its classes disagree with the labels: missing from the labels "
                        f"{sorted(set(columns[1:]) - set(classes))}, not in the sample {sorted(set(classes) - set(columns[1:]))}"
                        + ("; for a binary id,label submission set data.positive_class" if columns == ["id", "label"]
                           else ""))
    return problems


def data_problems(config: dict, sample_named: bool, scan: DataScan | None = None) -> list[str]:
    """A user's data set, read before planning: labels (empty, header-only, missing images, a label that reads as
    a missing value, one class), positive_class, sample_submission (missing when the recipe names it, or with other
    classes), and empty image files.
    `sample_named`: the recipe set data.sample_submission itself (else a missing default file is fine).
    `scan`: data_dir's scan, when the caller made one for the data fingerprint already (else it is made here).
    A demo recipe's data is built by its first job: only its classes are known, from the recipe."""
    if "demo" in config:
        return class_problems(config["demo"].get("classes") or default_classes(config["data"]["layout"]), config, None)
    sample_path = Path(config["data_dir"]) / config["data"]["sample_submission"]
    sample = sample_path if sample_path.is_file() else None
    try:
        labelled = labelled_images(config, sample)
    except DataError as error:
        return [str(error)]
    if sample is None and sample_named:
        return [f"data.sample_submission: {sample_path} not found (the recipe names it; fix the name, or drop "
                "the key to write the submission without the check)"]
    return (class_problems(sorted(labelled["label"].unique()), config, sample)
            + empty_image_problems(config, labelled, scan or scan_data(config["data_dir"])))
