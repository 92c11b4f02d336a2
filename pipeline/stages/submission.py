"""Stage 7 - the Kaggle submission CSV, checked against `sample_submission.csv` before it is written.

Multi-class (Dog Breed): `id`, then one probability column per class in sample_submission's order (sorted classes
when there is none), every test id exactly once, rows summing to 1. Binary (Dogs vs Cats, `positive_class` set):
`id,label` with label = P(positive class). `clip` bounds probabilities to [clip, 1-clip] (log loss punishes
confident mistakes without limit); multi-class rows are renormalised after clipping.

    python -m pipeline.stages.submission --probs out/calibration/test_probs.npy --test-csv out/test.csv \
        --split-csv out/split.csv --sample data/dogbreeds/sample_submission.csv --out out/submission.csv \
        --params '{"clip": 0.0}'
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import cli
from pipeline.data.dataset import natural_key, read_labeled_table, read_test_table
from pipeline.io import write_csv
from pipeline.offline.combine import submission_values


class SubmissionError(ValueError):
    pass


def _read_sample(sample_path: str | None) -> pd.DataFrame | None:
    if sample_path and Path(sample_path).is_file():
        return pd.read_csv(sample_path, dtype={"id": str}, keep_default_na=False, encoding="utf-8-sig")
    return None


def make_submission(probs: np.ndarray, test_ids: list[str], classes: list[str], sample: pd.DataFrame | None,
                    clip: float = 0.0, positive_class: str | None = None) -> pd.DataFrame:
    if probs.shape != (len(test_ids), len(classes)):
        raise SubmissionError(f"probabilities have shape {probs.shape}, expected ({len(test_ids)}, {len(classes)})")
    frame = pd.DataFrame(probs, columns=classes)
    frame.insert(0, "id", test_ids)
    if sample is not None:
        check_against_sample(frame, sample, positive_class)
        frame = frame.set_index("id").loc[sample["id"]].reset_index()
    else:
        frame = frame.iloc[sorted(range(len(frame)), key=lambda i: natural_key(test_ids[i]))].reset_index(drop=True)
    if positive_class is not None and positive_class not in classes:
        raise SubmissionError(f"positive_class {positive_class!r} is not one of the classes {classes}")
    columns = list(sample.columns[1:]) if sample is not None else sorted(classes)
    # float32 rows sum to 1 only to ~1e-7: clipped and renormalised in float64, as the bundle does (offline_combine)
    names, values = submission_values(frame[classes].to_numpy(dtype=np.float64), classes,
                                      {"clip": clip, "positive_class": positive_class, "columns": columns})
    return pd.concat([frame[["id"]], pd.DataFrame(values, columns=names)], axis=1)


def check_against_sample(frame: pd.DataFrame, sample: pd.DataFrame, positive_class: str | None) -> None:
    """Same ids (each once) and, for multi-class, the same class columns: otherwise fail loudly."""
    if sample.columns[0] != "id":
        raise SubmissionError(f"sample_submission's first column is {sample.columns[0]!r}, expected 'id'")
    if sample["id"].duplicated().any():
        raise SubmissionError(f"sample_submission repeats ids: {sample['id'][sample['id'].duplicated()].tolist()[:10]}")
    ours, theirs = set(frame["id"]), set(sample["id"])
    if ours != theirs:
        raise SubmissionError(f"test ids disagree with sample_submission: {len(theirs - ours)} missing from test/ "
                              f"(e.g. {sorted(theirs - ours)[:5]}), {len(ours - theirs)} not in the sample "
                              f"(e.g. {sorted(ours - theirs)[:5]})")
    if positive_class is None:
        ours_classes, their_classes = set(frame.columns[1:]), set(sample.columns[1:])
        if ours_classes != their_classes:
            raise SubmissionError(f"classes disagree with sample_submission: missing {sorted(their_classes - ours_classes)}, "
                                  f"extra {sorted(ours_classes - their_classes)}")
    elif list(sample.columns) != ["id", "label"]:
        raise SubmissionError(f"binary submission needs sample columns id,label; found {list(sample.columns)}")


def check_written(path: str | Path, submission: pd.DataFrame) -> None:
    """Read the file back: what lands on disk is what Kaggle will score."""
    written = pd.read_csv(path, dtype={"id": str}, keep_default_na=False)
    if len(written) != len(submission) or written["id"].duplicated().any():
        raise SubmissionError(f"{path}: rows or ids changed on writing")
    if "label" not in written.columns and not np.allclose(written.iloc[:, 1:].sum(axis=1), 1.0, atol=1e-4):
        raise SubmissionError(f"{path}: rows do not sum to 1")


# The slice (pipeline.workflow.slices): where its keys come from in the recipe, and what the workflow adds.
RECIPE_KEYS = ("data.positive_class", "submission")


def main(argv: list[str] | None = None) -> None:
    parser = cli.stage_parser(__doc__, RECIPE_KEYS)
    parser.add_argument("--probs", required=True, help="test probabilities from the calibrate stage")
    parser.add_argument("--test-csv", required=True)
    parser.add_argument("--split-csv", required=True)
    parser.add_argument("--sample", help="sample_submission.csv, when the competition ships one")
    parser.add_argument("--out", required=True)
    args, params, started = cli.begin("submission", parser, argv)
    _, classes = read_labeled_table(args.split_csv)
    test_ids = read_test_table(args.test_csv)["id"].tolist()
    try:
        submission = make_submission(probs=np.load(args.probs), test_ids=test_ids, classes=classes,
                                     sample=_read_sample(args.sample), clip=params["clip"],
                                     positive_class=params["positive_class"])
        write_csv(submission, args.out, float_format="%.10g")
        check_written(args.out, submission)
    except SubmissionError as error:
        Path(args.out).unlink(missing_ok=True)
        cli.fail(str(error))
    print(f"{args.out}: {len(submission)} rows x {submission.shape[1]} columns", flush=True)
    cli.finish("submission", started)


if __name__ == "__main__":
    main()
