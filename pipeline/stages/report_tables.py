"""The report's tables: the run's scores and the interpret stage's tables on one HTML page, which
`snakemake --report` shows inline (it offers CSV and JSON files only as downloads).

    python -m pipeline.stages.report_tables --metrics out/metrics.json --calibration out/calibration/calibration.json \
        --per-class out/interpret/per_class.csv --most-confused out/interpret/most_confused.csv \
        --class-counts out/class_counts.csv [--cv-metrics out/cv_metrics.json] \
        [--blend out/blend/weights.json out/blend_pseudo/weights.json] \
        [--pseudo-labels out/members/<student>-pseudo/folds/*/pseudo_labels.json] --out out/report/tables.html
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipeline import cli
from pipeline.report.pages import section, write_page
from pipeline.io import read_json

# The blends' folders (rules/results.smk): the members', and with a pseudo-label round the members' and students'.
BLEND_TITLES = {"blend": "Blend of the members", "blend_pseudo": "Blend of the members and the pseudo-label students"}


def scores_table(metrics: dict, calibration: dict) -> pd.DataFrame:
    """Log loss and accuracy without TTA, with fastai's TTA mean, and calibrated (what the submission uses)."""
    return pd.DataFrame({
        "no TTA": [metrics["valid_logloss_no_tta"], metrics["valid_accuracy_no_tta"]],
        f"TTA ({metrics['n_aug']} augmented passes)": [metrics["valid_logloss"], metrics["valid_accuracy"]],
        f"calibrated ({calibration['chosen']})": [calibration["logloss_calibrated"],
                                                  calibration["accuracy_calibrated"]],
    }, index=["log loss", "accuracy"])


def folds_table(cv: dict) -> pd.DataFrame:
    folds = pd.DataFrame(cv["folds"]).set_index("fold")
    return folds[["valid_logloss", "valid_accuracy", "valid_logloss_no_tta", "valid_accuracy_no_tta"]]


def blend_table(weights: dict) -> pd.DataFrame:
    """Each member's out-of-fold scores (and weight) beside the blend's, cross-fitted as a member's own OOF is."""
    rows = [{"member": member["name"], "weight": member["weight"], "OOF log loss": member["oof_logloss"],
             "OOF accuracy": member["oof_accuracy"]} for member in weights["members"]]
    total = sum(member["weight"] or 0 for member in weights["members"])
    rows.append({"member": "blend (cross-fitted)", "weight": total, "OOF log loss": weights["blend_oof_logloss"],
                 "OOF accuracy": weights["blend_oof_accuracy"]})
    table = pd.DataFrame(rows)
    # A stacker has no weight per member: its column would be empty.
    return table if weights["method"] == "weights" else table.drop(columns="weight")


def blend_note(weights: dict) -> str:
    how = f"weights on {weights['space'].replace('_', '-')}" if weights["method"] == "weights" else "a stacker"
    return (f"{how}; each fold scored by a blend fitted on the other folds (fitted on every row and scored on them: "
            f"{weights['in_sample_oof_logloss']:.4f}); best member: {weights['best_member']}")


def pseudo_labels_table(reports: list[dict]) -> pd.DataFrame:
    """Per fold: how many test images its student learnt, at what threshold, and their labels' class balance."""
    return pd.DataFrame([{"fold": report["fold"], "teacher": report["teacher"], "mode": report["mode"],
                          "threshold": report["threshold"], "used": report["n_used"], "of test images": report["n_test"],
                          "mean confidence": report["mean_confidence"],
                          "per class": ", ".join(f"{name} {count}" for name, count in report["class_balance"].items())}
                         for report in reports])


def main(argv: list[str] | None = None) -> None:
    parser = cli.stage_parser(__doc__)
    parser.add_argument("--metrics", required=True)
    parser.add_argument("--calibration", required=True)
    parser.add_argument("--per-class", required=True)
    parser.add_argument("--most-confused", required=True)
    parser.add_argument("--class-counts", required=True)
    parser.add_argument("--cv-metrics", help="a K-fold run's cv_metrics.json")
    parser.add_argument("--blend", nargs="+", default=[],
                        help="a recipe with members: each blend's weights.json, the members' blend first")
    parser.add_argument("--pseudo-labels", nargs="+", default=[], help="a pseudo-label round: each fold's report")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    metrics, calibration = read_json(args.metrics), read_json(args.calibration)
    where = "out of fold" if args.cv_metrics else "validation set"
    parts = [section(f"Scores ({where}, {calibration['n_rows']} images)", scores_table(metrics, calibration),
                     f"calibration: {calibration['method']}")]
    if args.cv_metrics:
        parts.append(section("Per fold (validation)", folds_table(read_json(args.cv_metrics))))
    for blend in args.blend:
        weights = read_json(blend)
        title = BLEND_TITLES.get(Path(blend).parent.name, Path(blend).parent.name)
        parts.append(section(f"{title} (out of fold)", blend_table(weights),
                             blend_note(weights), index=False))
    if args.pseudo_labels:
        parts.append(section("Pseudo-labels (test images each fold's student learnt)",
                             pseudo_labels_table([read_json(report) for report in args.pseudo_labels]), index=False))
    parts += [section("Per class, worst log loss first", pd.read_csv(args.per_class, keep_default_na=False), index=False),
              section("Most confused (actual, predicted)", pd.read_csv(args.most_confused, keep_default_na=False), index=False),
              section("Images per class", pd.read_csv(args.class_counts, keep_default_na=False), index=False)]
    write_page(parts, args.out)
    print(f"{len(parts)} tables -> {args.out}", flush=True)


if __name__ == "__main__":
    main()
