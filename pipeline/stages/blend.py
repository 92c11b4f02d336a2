"""Several members blended on their out-of-fold predictions (a recipe's `members`, `blend`).

Each member folder holds what its oof stage wrote: oof.csv and oof/{valid_passes.npy, test_passes.npy,
cv_metrics.json}. A member's OOF and test probabilities are its TTA mean (its fold ensemble for the test rows). The
blend is non-negative weights summing to one (`method: weights`, on probabilities or log-probabilities) or a
logistic-regression stacker, fitted to minimise OOF log loss. Its reported OOF figure is cross-fitted: each fold's
rows are blended by a fit on the other folds only, so it is as honest as a member's own. The test prediction uses
the fit on every OOF row. The outputs mirror the oof stage's (oof.csv, valid_passes.npy and test_passes.npy with
both passes the blend, cv_metrics.json with n_aug 0), so the calibrate stage runs on the blend unchanged and fits
only a temperature.

    python -m pipeline.stages.blend --split-csv out/split.csv --members lite0 r18 \
        --member-dirs out/members/lite0 out/members/r18 --out-dir out/blend \
        --params '{"method": "weights", "space": "probs", "stacker_c": 1.0, "seed": 42}'
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.compete import blending as blend
from pipeline import cli
from pipeline.compete import cv_scores
from pipeline.predict import passes
from pipeline.report import plots
from pipeline.data.dataset import class_indices, read_labeled_table
from pipeline.io import read_json, remove_stale_temporaries, save_npy, write_csv, write_json

MEMBER_FILES = ("oof.csv", "oof/valid_passes.npy", "oof/test_passes.npy", "oof/cv_metrics.json")


@dataclass
class Member:
    name: str
    folder: Path
    rows: pd.DataFrame  # id, label, fold of oof.csv
    cv: dict
    oof: np.ndarray  # (N, C) TTA mean
    plain: np.ndarray  # (N, C) no TTA
    test: np.ndarray  # (T, C) the fold ensemble's TTA mean


def _check_passes(array: np.ndarray, path: Path, n_rows: int | None, n_classes: int) -> None:
    if array.ndim != 3 or array.shape[0] != 2 or array.shape[2] != n_classes or n_rows not in (None, array.shape[1]):
        cli.fail(f"{path}: shape {array.shape}, expected (2, {n_rows or 'test rows'}, {n_classes})")


def read_member(name: str, folder: Path, n_classes: int) -> Member:
    for file in MEMBER_FILES:
        if not (folder / file).is_file():
            cli.fail(f"{folder}: no {file}; the member's oof stage writes it")
    rows = pd.read_csv(folder / "oof.csv", dtype={"id": str, "label": str}, keep_default_na=False)[["id", "label", "fold"]]
    cv = read_json(folder / "oof" / "cv_metrics.json")
    valid_passes, test_passes = np.load(folder / "oof" / "valid_passes.npy"), np.load(folder / "oof" / "test_passes.npy")
    _check_passes(valid_passes, folder / "oof" / "valid_passes.npy", len(rows), n_classes)
    _check_passes(test_passes, folder / "oof" / "test_passes.npy", None, n_classes)
    n_aug = cv["n_aug"]
    return Member(name=name, folder=folder, rows=rows, cv=cv, oof=passes.tta_mean(valid_passes, n_aug),
                  plain=passes.plain(valid_passes), test=passes.tta_mean(test_passes, n_aug))


def check_alike(members: list[Member], classes: list[str], split_csv: str) -> None:
    """Every member must predict the same images on the same folds, with the same classes: a blend is row by row."""
    first = members[0]
    for member in members:
        if member.cv["classes"] != classes:
            cli.fail(f"{member.folder}: its classes {member.cv['classes'][:5]} differ from {split_csv}'s {classes[:5]}")
        if not member.rows[["id", "fold"]].equals(first.rows[["id", "fold"]]):
            cli.fail(f"{member.folder}/oof.csv: its rows (id, fold) differ from {first.folder}/oof.csv's; every member "
                     "must predict the same images on the same folds")
        if len(member.test) != len(first.test):
            cli.fail(f"{member.folder}: {len(member.test)} test rows, but {first.folder} has {len(first.test)}")


def cv_metrics(y, folds, blended, blended_plain, classes, method) -> dict:
    """The oof stage's cv_metrics.json for the cross-fitted blend, so calibrate and the report read it as one."""
    per_fold = []
    for fold in np.unique(folds):
        rows = folds == fold
        logloss, accuracy = cv_scores.scores(y[rows], blended[rows])
        logloss_no_tta, accuracy_no_tta = cv_scores.scores(y[rows], blended_plain[rows])
        per_fold.append({"fold": int(fold), "n_valid": int(rows.sum()), "valid_logloss": logloss,
                         "valid_accuracy": accuracy, "valid_logloss_no_tta": logloss_no_tta,
                         "valid_accuracy_no_tta": accuracy_no_tta})
    return cv_scores.cv_metrics(y=y, probs=blended, plain=blended_plain, folds=per_fold, n_aug=0, average=method,
                                classes=classes)


def weights_report(members, params, classes, y, folds, blended, on_all, per_fold) -> dict:
    weights = params["method"] == "weights"
    rows = [{"name": member.name, "weight": float(weight) if weights else None,
             "oof_logloss": member.cv["oof_logloss"], "oof_accuracy": member.cv["oof_accuracy"]}
            for member, weight in zip(members, on_all.weights if weights else [None] * len(members))]
    best = min(rows, key=lambda row: row["oof_logloss"])
    oof_logloss, oof_accuracy = cv_scores.scores(y, blended)
    report = {"method": params["method"], "space": params["space"], "classes": classes, "n_oof": len(y),
              "members": rows, "best_member": best["name"], "best_member_oof_logloss": best["oof_logloss"],
              "blend_oof_logloss": oof_logloss, "blend_oof_accuracy": oof_accuracy,
              "in_sample_oof_logloss": cv_scores.scores(y, on_all.predict(np.stack([m.oof for m in members])))[0],
              "folds": sorted(int(fold) for fold in np.unique(folds))}
    if not weights:  # the fit on every row as plain data: what the bundle applies to the test images
        report["stacker"] = on_all.coefficients()
    if weights:  # fold k's pseudo-label teacher blends fold k's members with the weights fitted without fold k
        report["fold_weights"] = {str(fold): fitted.weights.tolist() for fold, fitted in per_fold.items()}
    return report


def fit_blend(oof, plain, y, folds, params, n_classes):
    """The cross-fitted blend with and without TTA (the same per-fold fits), the fit on every row, the per-fold fits."""
    def new_blender():
        return blend.blender(params, n_classes)

    blended, per_fold = blend.cross_fitted(oof, y, folds, new_blender)
    blended_plain = blend.held_out_predictions(per_fold, plain, folds)
    return blended, blended_plain, new_blender().fit(oof, y), per_fold


# The slice (pipeline.workflow.slices): where its keys come from in the recipe, and what the workflow adds.
RECIPE_KEYS = ("seed", "blend")
# The stacker's regularisation and seeded cross-validation; the weights need neither.
USED_WHEN = {"blend.stacker_c": ("blend.method", "stacker"), "seed": ("blend.method", "stacker")}


def main(argv: list[str] | None = None) -> None:
    parser = cli.stage_parser(__doc__, RECIPE_KEYS)
    parser.add_argument("--split-csv", required=True, help="for the class list only")
    parser.add_argument("--members", required=True, nargs="+", help="the members' names, in the recipe's order")
    parser.add_argument("--member-dirs", required=True, nargs="+", help="out_dir/members/<name> of each, in order")
    parser.add_argument("--out-dir", required=True)
    args, params, started = cli.begin("blend", parser, argv)
    if len(args.members) != len(args.member_dirs):
        cli.fail(f"{len(args.members)} --members but {len(args.member_dirs)} --member-dirs")
    _, classes = read_labeled_table(args.split_csv)
    members = [read_member(name, Path(folder), len(classes)) for name, folder in zip(args.members, args.member_dirs)]
    check_alike(members, classes, args.split_csv)
    rows = members[0].rows
    y, folds = class_indices(rows["label"], classes).to_numpy(), rows["fold"].to_numpy()
    oof, plain, test = (np.stack([getattr(member, part) for member in members]) for part in ("oof", "plain", "test"))
    blended, blended_plain, on_all, per_fold = fit_blend(oof=oof, plain=plain, y=y, folds=folds, params=params,
                                                         n_classes=len(classes))
    method = params["method"] + (f" ({params['space']})" if params["method"] == "weights" else "")
    report = weights_report(members=members, params=params, classes=classes, y=y, folds=folds, blended=blended,
                            on_all=on_all, per_fold=per_fold)
    metrics = cv_metrics(y=y, folds=folds, blended=blended, blended_plain=blended_plain, classes=classes, method=method)
    out_dir = Path(args.out_dir)
    remove_stale_temporaries(out_dir)
    write_csv(pd.concat([rows, pd.DataFrame(blended, columns=classes)], axis=1), out_dir / "oof.csv",
              float_format="%.10g")
    save_npy(np.stack([blended, blended]).astype(np.float32), out_dir / "valid_passes.npy")
    test_blend = on_all.predict(test)
    save_npy(np.stack([test_blend, test_blend]).astype(np.float32), out_dir / "test_passes.npy")
    write_json(metrics, out_dir / "cv_metrics.json")
    write_json(report, out_dir / "weights.json")
    plots.member_correlation(blend.correlation(oof, y), args.members, out_dir / "correlation.png",
                             "Pearson correlation of the members' out-of-fold\nlog-probability of the true class "
                             f"({len(y)} images)")
    plots.fold_scores(metrics, out_dir / "cv_folds.png")
    for member in report["members"]:
        weight = "" if member["weight"] is None else f", weight {member['weight']:.3f}"
        print(f"{member['name']}: OOF log loss {member['oof_logloss']:.4f}{weight}", flush=True)
    print(f"blend, {method}, cross-fitted over {metrics['n_folds']} folds: OOF log loss "
          f"{report['blend_oof_logloss']:.4f}, accuracy {report['blend_oof_accuracy']:.4f} (in sample "
          f"{report['in_sample_oof_logloss']:.4f}); best member {report['best_member']} "
          f"{report['best_member_oof_logloss']:.4f}", flush=True)
    cli.finish("blend", started)


if __name__ == "__main__":
    main()
