"""Stage 8 - look back at the pictures: the validation images the model gets most wrong, and where it errs.

Reads the out-of-sample validation probabilities the submission's calibration chose (`calibration/valid_probs.npy`:
the validation set of a single split, or a K-fold run's out-of-fold predictions) and writes:

- `top_losses.png`: the images with the highest loss (fastai v2's `plot_top_losses`), titled actual / predicted,
  the predicted class's probability and the loss;
- `by_class.png`: fastai 0.7 lesson 1's plots for the `classes` classes with the highest log loss: per class, its
  most correct, most incorrect (most confidently wrong) and most uncertain (smallest margin between the two likeliest
  classes) images;
- `most_confused.csv`: actual, predicted, count, most frequent first (v2's `most_confused`);
- `per_class.csv`: label, n, accuracy, log_loss, worst log loss first.

Images come from the resize cache under the validation transform without normalisation: what the model saw.

    python -m pipeline.stages.interpret --split-csv out/split.csv --valid-rows out/split.csv \
        --valid-probs out/calibration/valid_probs.npy --cache-dir out/resized/340 --out-dir out/interpret \
        --params '{"size": 299, "top_losses": 9, "classes": 6, "images_per_group": 3}'
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import cli
from pipeline.report import plots
from pipeline.data.dataset import class_indices, read_labeled_table, read_rows
from pipeline.io import remove_stale_temporaries, write_csv
from pipeline.train.loaders import ImageDataset
from pipeline.data.transforms import valid_transform

FLOOR = 1e-15  # Kaggle's clip: a zero probability for the actual class costs a finite loss


def scored_rows(rows: pd.DataFrame, probs: np.ndarray, classes: list[str]) -> pd.DataFrame:
    """One row per validation image: its actual and predicted class, their probabilities, its loss and margin."""
    y = class_indices(rows["label"], classes).to_numpy()
    predicted = probs.argmax(1)
    top_two = np.sort(probs, axis=1)[:, -2:] if probs.shape[1] > 1 else np.c_[np.zeros(len(probs)), probs]
    return rows.assign(
        y=y, predicted=predicted, predicted_label=[classes[i] for i in predicted],
        p_actual=probs[np.arange(len(y)), y], p_predicted=probs.max(1),
        loss=-np.log(np.clip(probs[np.arange(len(y)), y], FLOOR, 1)),
        margin=top_two[:, 1] - top_two[:, 0], correct=predicted == y,
    )


def most_confused(scored: pd.DataFrame) -> pd.DataFrame:
    wrong = scored[~scored["correct"]]
    counts = wrong.groupby(["label", "predicted_label"]).size().rename("count").reset_index()
    counts = counts.rename(columns={"label": "actual", "predicted_label": "predicted"})
    return counts.sort_values(["count", "actual", "predicted"], ascending=[False, True, True], ignore_index=True)


def per_class(scored: pd.DataFrame) -> pd.DataFrame:
    table = scored.groupby("label").agg(n=("y", "size"), accuracy=("correct", "mean"), log_loss=("loss", "mean"))
    return table.reset_index().sort_values(["log_loss", "label"], ascending=[False, True], ignore_index=True)


def class_extremes(scored: pd.DataFrame, label: str, n: int) -> dict[str, pd.DataFrame]:
    """Lesson 1's three views of one class's images: most correct, most incorrect, most uncertain."""
    own = scored[scored["label"] == label]
    return {"most correct": own[own["correct"]].nlargest(n, "p_actual"),
            "most incorrect": own[~own["correct"]].nsmallest(n, "p_actual"),
            "most uncertain": own.nsmallest(n, "margin")}


# The slice (pipeline.workflow.slices): where its keys come from in the recipe, and what the workflow adds; `size` is
# the final size.
RECIPE_KEYS = ("interpret",)
WORKFLOW_KEYS = ("size", "preprocessing")


def read_scored(split_csv: str, valid_rows: str, valid_probs: str) -> tuple[pd.DataFrame, list[str]]:
    """The validation rows with their image paths and probabilities, scored (scored_rows); and the classes."""
    labelled, classes = read_labeled_table(split_csv)
    rows = read_rows(valid_rows).drop(columns=["path"], errors="ignore")
    rows = rows.merge(labelled[["id", "path"]], on="id", how="left", validate="one_to_one")
    probs = np.load(valid_probs)
    if probs.shape != (len(rows), len(classes)):
        cli.fail(f"{valid_probs} has shape {probs.shape}; {valid_rows} needs ({len(rows)}, {len(classes)})")
    return scored_rows(rows, probs, classes), classes


def draw(scored: pd.DataFrame, classes_table: pd.DataFrame, n_classes: int, params, cache_dir: str,
         out_dir: Path) -> None:
    """top_losses.png (the highest losses) and by_class.png (lesson 1's extremes of the worst classes)."""
    images = ImageDataset(cache_dir, scored["path"], transform=valid_transform(params["size"], normalise=False,
                                                                preprocessing=params.get("preprocessing")))

    def picture(index: int) -> np.ndarray:
        return images[index][0].permute(1, 2, 0).numpy()

    worst = scored.nlargest(params["top_losses"], "loss")
    plots.titled_images([picture(i) for i in worst.index],
                        [f"{row.label} / {row.predicted_label}\np {row.p_predicted:.2f} · loss {row.loss:.2f}"
                         for row in worst.itertuples()],
                        out_dir / "top_losses.png",
                        f"the {len(worst)} highest losses of {len(scored)} validation images "
                        "(actual / predicted, the predicted class's probability, loss)")
    n_images = params["images_per_group"]
    shown = classes_table.head(params["classes"])
    grid = {row.label: {group: [(picture(i), f"{frame.at[i, 'predicted_label']} {frame.at[i, 'p_predicted']:.2f}")
                                for i in frame.index]
                        for group, frame in class_extremes(scored, row.label, n_images).items()}
            for row in shown.itertuples()}
    row_titles = [f"{row.label}\nacc {row.accuracy:.2f}\nloss {row.log_loss:.2f}" for row in shown.itertuples()]
    plots.class_extremes(grid, row_titles, n_images, out_dir / "by_class.png",
                         f"the {len(shown)} classes of {n_classes} with the highest log loss "
                         "(each image titled with the predicted class and its probability)")


def main(argv: list[str] | None = None) -> None:
    parser = cli.stage_parser(__doc__, RECIPE_KEYS, WORKFLOW_KEYS)
    parser.add_argument("--split-csv", required=True, help="every labelled image, with its path in the cache")
    parser.add_argument("--valid-rows", required=True, help="CSV aligned with --valid-probs (split.csv or oof.csv)")
    parser.add_argument("--valid-probs", required=True)
    parser.add_argument("--cache-dir", required=True)
    parser.add_argument("--out-dir", required=True)
    args, params, started = cli.begin("interpret", parser, argv)
    scored, classes = read_scored(args.split_csv, args.valid_rows, args.valid_probs)
    out_dir = Path(args.out_dir)
    remove_stale_temporaries(out_dir)
    classes_table, confused = per_class(scored), most_confused(scored)
    write_csv(classes_table, out_dir / "per_class.csv")
    write_csv(confused, out_dir / "most_confused.csv")
    draw(scored=scored, classes_table=classes_table, n_classes=len(classes), params=params, cache_dir=args.cache_dir,
         out_dir=out_dir)
    top = confused.head(3).itertuples()
    print(f"{int((~scored['correct']).sum())} of {len(scored)} wrong; most confused: "
          + ("; ".join(f"{row.actual} as {row.predicted} x{row.count}" for row in top) or "none"), flush=True)
    cli.finish("interpret", started)


if __name__ == "__main__":
    main()
