"""The two dataset layouts, validation of ids and files, and image loading.

Layouts (as fastai 0.7's `from_csv` / `from_paths`):
  csv      Kaggle Dog Breed: `labels.csv` (id, label), `train/<id><suffix>`, `test/*`, `sample_submission.csv`
  folders  Dogs vs Cats:     `train/<class>/*`, `valid/<class>/*`, optional `test/*`
Every table produced here has a `path` column relative to `data_dir`; later stages read images only through it.
"""
from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Collection
from pathlib import Path, PurePosixPath
from typing import NamedTuple

import numpy as np
import pandas as pd
# The strings pandas (and so most readers of a CSV) take for a missing value by default: read_csv's documented
# `na_values`, kept by pandas only here.
from pandas._libs.parsers import STR_NA_VALUES

# How an image file is found, read and checked is the bundle's too (pipeline.offline.images): one implementation for both.
from pipeline.offline.images import IMAGE_SUFFIXES, image_files, inspect_image, load_rgb, natural_key, upright_size  # noqa: F401

LAYOUTS = ("csv", "folders")
SOFT_PREFIX = "soft_"  # a split's soft-target columns (pipeline.compete.pseudo_split writes them)


class DataError(ValueError):
    """Bad input data: the message names the file or row."""


def summarise(items: list[str], limit: int = 20) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def refuse_duplicates(ids: pd.Series, where: str, what: str) -> None:
    duplicated = ids[ids.duplicated()].tolist()
    if duplicated:
        raise DataError(f"{where}: {what} {summarise(duplicated)}")


def check_id(image_id: str, where: str) -> str:
    """Reject ids that could name a path outside the data folder, before any path is built from them."""
    if not isinstance(image_id, str) or not image_id.strip():
        raise DataError(f"{where}: empty id")
    if "/" in image_id or "\\" in image_id or image_id in (".", "..") or ".." in PurePosixPath(image_id).parts:
        raise DataError(f"{where}: id {image_id!r} contains a path separator or '..'")
    if os.path.isabs(image_id) or re.match(r"^[A-Za-z]:", image_id):
        raise DataError(f"{where}: id {image_id!r} is an absolute path")
    return image_id


def sample_classes(sample_csv: str | Path) -> list[str]:
    """The class columns of a competition's sample_submission.csv (its header less the id column); [] without one."""
    if not Path(sample_csv).is_file():
        return []
    return [str(name) for name in pd.read_csv(sample_csv, nrows=0, encoding="utf-8-sig").columns[1:]]


def read_labels_csv(data_dir: str | Path, suffix: str = ".jpg", labels_csv: str = "labels.csv",
                    sample_classes: Collection[str] | None = ()) -> pd.DataFrame:
    """`labels.csv` rows in file order -> (id, label, path). Row numbers in errors count the header as line 1.

    A label that pandas reads as a missing value (`NaN`, `NA`, `null`, `None`, `#N/A`, ...) is an error, unless
    `sample_classes` (the sample submission's class columns) names it: only there is it surely a class. None reads
    the rows for their ids and paths only, the labels unjudged (`all_images`)."""
    data_dir = Path(data_dir)
    csv_path = data_dir / labels_csv
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: labels file not found")
    # utf-8-sig drops a BOM; pandas handles CRLF line ends. Only the first two columns matter (fastai's from_csv).
    try:
        raw = pd.read_csv(csv_path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except pd.errors.EmptyDataError:
        raise DataError(f"{csv_path}: the file is empty; it needs a header (id,label) and one row per image")
    if raw.empty:
        raise DataError(f"{csv_path}: no rows after the header; it needs one row (id,label) per labelled image")
    if raw.shape[1] < 2:
        raise DataError(f"{csv_path}: needs at least two columns (id, label), found {list(raw.columns)}")
    table = pd.DataFrame({"id": raw.iloc[:, 0].str.strip(), "label": raw.iloc[:, 1].str.strip()})
    for row, (image_id, label) in enumerate(zip(table["id"], table["label"]), start=2):
        check_id(image_id, f"{csv_path} line {row}")
        if not label:
            raise DataError(f"{csv_path} line {row}: empty label for id {image_id!r}")
        if sample_classes is not None and label in STR_NA_VALUES and label not in sample_classes:
            raise DataError(f"{csv_path} line {row}: the label {label!r} of id {image_id!r} reads as a missing value "
                            "(pandas and most CSV readers take it for an empty cell), so it would become a class of "
                            "its own; give the image its class, or drop the row (a class really named so must be a "
                            "column of the sample submission)")
    refuse_duplicates(table["id"], str(csv_path), "duplicate ids")
    table["path"] = "train/" + table["id"] + suffix
    missing = [p for p in table["path"] if not (data_dir / p).is_file()]
    if missing:
        raise DataError(f"{csv_path}: {len(missing)} labelled images are missing under {data_dir}: {summarise(missing)}")
    return table


def unlabelled_images(data_dir: str | Path, labeled: pd.DataFrame) -> list[str]:
    """Files in train/ that no labels.csv row names: not used, and reported so (a logged skip)."""
    named = set(labeled["path"])
    return [f"train/{p.name}" for p in image_files(Path(data_dir) / "train") if f"train/{p.name}" not in named]


def read_folders(data_dir: str | Path) -> pd.DataFrame:
    """`train/<class>/*` and `valid/<class>/*` -> (id, label, path, is_valid); id = file stem. A class folder named
    like a missing value (`NaN`, `None`) is a class like any other: someone named the folder, no reader guessed it, and
    every later table is read with keep_default_na=False."""
    data_dir = Path(data_dir)
    rows = []
    for split_name in ("train", "valid"):
        split_dir = data_dir / split_name
        if not split_dir.is_dir():
            raise DataError(f"{split_dir}: folder layout needs train/<class>/ and valid/<class>/")
        for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            for image in image_files(class_dir):
                rows.append((image.stem, class_dir.name, image.relative_to(data_dir).as_posix(), split_name == "valid"))
    table = pd.DataFrame(rows, columns=["id", "label", "path", "is_valid"])
    if table.empty:
        raise DataError(f"{data_dir}: no images under train/<class>/ or valid/<class>/")
    refuse_duplicates(table["id"], str(data_dir), "duplicate file names across classes/splits:")
    return table


def read_rows(rows_csv: str | Path) -> pd.DataFrame:
    """The rows aligned with the valid passes: with `is_valid` (a single split's split.csv) only the valid ones."""
    rows = pd.read_csv(rows_csv, dtype={"id": str, "label": str}, keep_default_na=False)
    return rows[rows["is_valid"]].reset_index(drop=True) if "is_valid" in rows else rows


def read_labeled(data_dir: str | Path, layout: str, suffix: str = ".jpg",
                 sample_classes: Collection[str] | None = ()) -> pd.DataFrame:
    """The labelled images of either layout; `sample_classes` as read_labels_csv takes them (the csv layout's)."""
    if layout == "csv":
        return read_labels_csv(data_dir, suffix, sample_classes=sample_classes)
    if layout == "folders":
        return read_folders(data_dir)
    raise DataError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")


def read_test(data_dir: str | Path) -> pd.DataFrame:
    """Every image in `test/`, in natural order -> (id, path). An empty or absent test folder is an error."""
    data_dir = Path(data_dir)
    files = image_files(data_dir / "test")
    if not files:
        raise DataError(f"{data_dir / 'test'}: no test images found")
    table = pd.DataFrame({"id": [f.stem for f in files], "path": [f"test/{f.name}" for f in files]})
    refuse_duplicates(table["id"], str(data_dir / "test"), "several files share the ids")
    return table


def all_images(data_dir: str | Path, layout: str, suffix: str = ".jpg") -> pd.DataFrame:
    """(id, split, path) for every labelled and test image; split is 'train' or 'test' (the folder it came from)."""
    # Only ids and paths leave here: the labels are judged where they become classes (the split, the plan-time check).
    labeled = read_labeled(data_dir, layout, suffix, sample_classes=None)
    test = read_test(data_dir)
    return pd.concat([labeled.assign(split="train")[["id", "split", "path"]],
                      test.assign(split="test")[["id", "split", "path"]]], ignore_index=True)


def read_bad_paths(bad_images_csv: str | Path | None) -> set[str]:
    """Paths the image-stats stage listed as unreadable (bad_images.csv); none when no list is given."""
    return set(pd.read_csv(bad_images_csv, dtype=str)["path"]) if bad_images_csv else set()


def read_test_table(test_csv: str | Path) -> pd.DataFrame:
    """test.csv (id, path, usable) as written by the split stage."""
    return pd.read_csv(test_csv, dtype={"id": str, "path": str}, keep_default_na=False)


def read_labeled_table(split_csv: str | Path) -> tuple[pd.DataFrame, list[str]]:
    """A split.csv (a single split's, a fold's, or a K-fold run's fold assignment) and its sorted classes."""
    split = pd.read_csv(split_csv, dtype={"id": str, "label": str}, keep_default_na=False)
    return split, sorted(split["label"].unique())


def class_indices(labels: pd.Series, classes: list[str]) -> pd.Series:
    """Each label's position in the sorted class list: the integer targets every stage scores against."""
    return labels.map({name: index for index, name in enumerate(classes)})


def class_counts(split: pd.DataFrame) -> pd.DataFrame:
    """Images per class: n_train / n_valid for one split; for a K-fold assignment, n_fold_<k> per fold."""
    if "is_valid" in split:
        parts, columns = np.where(split["is_valid"], "n_valid", "n_train"), ["n_train", "n_valid"]
    else:
        parts = "n_fold_" + split["fold"].astype(str)
        columns = [f"n_fold_{fold}" for fold in sorted(split["fold"].unique())]
    counts = (split.assign(part=parts)
              .pivot_table(index="label", columns="part", values="id", aggfunc="count", fill_value=0)
              .reindex(columns=columns, fill_value=0))
    return counts.rename_axis(columns=None).reset_index()


def check_classes(counts: pd.DataFrame) -> None:
    if "n_train" not in counts:
        return  # a K-fold assignment: every class is in every fold (stratified_folds made sure)
    untrained = counts.loc[counts["n_train"] == 0, "label"].tolist()
    if untrained:
        raise DataError(f"classes with no training image after the split: {', '.join(untrained)}")
    unvalidated = counts.loc[counts["n_valid"] == 0, "label"].tolist()
    if unvalidated:
        print(f"warning: classes with no validation image: {', '.join(unvalidated)}", flush=True)


def soft_columns(n_classes: int) -> list[str]:
    """The soft-target columns of a split with soft pseudo-labels: soft_<i> is class i of the sorted classes."""
    return [f"{SOFT_PREFIX}{index}" for index in range(n_classes)]


def _soft_columns_in(frame: pd.DataFrame) -> list[str]:
    return [column for column in frame.columns if column.startswith(SOFT_PREFIX)]


def read_split(split_csv: str | Path) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """(train rows, valid rows, sorted classes), with an integer `y` column (and any soft_* target columns)."""
    split, classes = read_labeled_table(split_csv)
    soft = _soft_columns_in(split)
    if soft and sorted(soft) != sorted(soft_columns(len(classes))):
        raise DataError(f"{split_csv}: soft-target columns {soft} do not match its {len(classes)} classes "
                        f"({SOFT_PREFIX}0..{SOFT_PREFIX}{len(classes) - 1})")
    split["y"] = class_indices(split["label"], classes)
    return split[~split["is_valid"]].reset_index(drop=True), split[split["is_valid"]].reset_index(drop=True), classes


def class_prior(train: pd.DataFrame, n_classes: int) -> np.ndarray:
    """The training rows' class frequencies: what an unreadable test image is predicted (the TTA stage, the bundle)."""
    return np.bincount(train["y"], minlength=n_classes) / len(train)


def training_targets(frame: pd.DataFrame) -> np.ndarray:
    """What a training set learns: (N, C) float32 soft targets where the split has soft_* columns (soft pseudo-labels,
    one-hot for the labelled rows), else the integer `y` as it always was. Validation always scores the integer `y`."""
    soft = _soft_columns_in(frame)
    if not soft:
        return frame["y"].to_numpy()
    return frame[soft_columns(len(soft))].to_numpy(dtype=np.float32)


class DataScan(NamedTuple):
    fingerprint: str  # see data_fingerprint
    empty_files: frozenset[str]  # the zero-byte files, as paths relative to data_dir with '/'


def scan_data(data_dir: str | Path) -> DataScan:
    """One stat() per file under `data_dir`: the data fingerprint, and the empty files the plan-time check refuses."""
    digest, empty = hashlib.sha256(), set()
    root = Path(data_dir)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(f for f in filenames if not f.startswith(".")):  # e.g. Snakemake's timestamps
            stat = os.stat(os.path.join(dirpath, name))
            rel = os.path.relpath(os.path.join(dirpath, name), root)
            digest.update(f"{rel}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
            if stat.st_size == 0:
                empty.add(Path(rel).as_posix())
    return DataScan(digest.hexdigest()[:16], frozenset(empty))


def data_fingerprint(data_dir: str | Path) -> str:
    """A cheap digest of every file's name, size and mtime under `data_dir`.

    Snakemake sees a changed labels file, but not an image replaced in place inside `train/`;
    passing this digest as a rule parameter makes such an edit rerun the image stages.
    """
    return scan_data(data_dir).fingerprint
