"""Sweeps - a member's score as its submission would be scored: the log loss of its out-of-fold predictions (a
K-fold run's) or of its validation predictions (a single split's), calibrated out of sample by the calibrate stage's
own code, with the uncalibrated TTA mean and accuracy beside it.

    python -m pipeline.stages.member_score --split-csv out/split.csv --valid-rows out/members/t1/oof.csv \
        --valid-passes out/members/t1/oof/valid_passes.npy --out out/members/t1/sweep/score.json \
        --params '{"seed": 42, "n_aug": 4, "enabled": true}'
"""
from __future__ import annotations

import numpy as np

from pipeline import cli
from pipeline.compute import runtime
from pipeline.data.dataset import class_indices, read_labeled_table, read_rows
from pipeline.io import write_json
from pipeline.compete.calibration import calibrate, cross_fit_groups

# The slice (pipeline.workflow.slices): the member's own, as its calibration would run.
RECIPE_KEYS = ("seed", "tta.n_aug", "calibration")


def main(argv: list[str] | None = None) -> None:
    parser = cli.stage_parser(__doc__, RECIPE_KEYS)
    parser.add_argument("--split-csv", required=True, help="for the class list only")
    parser.add_argument("--valid-rows", required=True, help="CSV aligned with --valid-passes: label, maybe fold")
    parser.add_argument("--valid-passes", required=True)
    parser.add_argument("--out", required=True)
    args, params, started = cli.begin("member_score", parser, argv)
    runtime.setup(1, params["seed"], "cpu")
    _, classes = read_labeled_table(args.split_csv)
    rows, passes = read_rows(args.valid_rows), np.load(args.valid_passes)
    if passes.shape[:2] != (2, len(rows)):
        cli.fail(f"{args.valid_passes}: shape {passes.shape}, expected (2, {len(rows)}, classes)")
    groups, method = cross_fit_groups(rows, params["seed"])
    report, _ = calibrate(passes, class_indices(rows["label"], classes).to_numpy(), groups, params["n_aug"],
                          params["enabled"] and len(np.unique(groups)) > 1)
    score = {"logloss": report["logloss_calibrated"], "accuracy": report["accuracy_calibrated"],
             "logloss_tta": report["logloss_tta"], "logloss_no_tta": report["logloss_no_tta"],
             "chosen": report["chosen"], "n_rows": report["n_rows"],
             "scope": "out-of-fold" if "fold" in rows and rows["fold"].nunique() > 1 else "validation",
             "method": method}
    write_json(score, args.out)
    print(f"{score['scope']} log loss {score['logloss']:.4f} calibrated ({score['chosen']}), TTA mean "
          f"{score['logloss_tta']:.4f}, accuracy {score['accuracy']:.4f}", flush=True)
    cli.finish("member_score", started)


if __name__ == "__main__":
    main()
