"""Every figure the pipeline draws (matplotlib, Agg backend), each written atomically as a PNG."""
from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.io import save_figure


def _subplots(*args, **kwargs):
    """pyplot's `subplots` on the Agg backend. matplotlib is imported here, at the first figure, and kept out of the
    start-up of every stage that imports this module (0.2-0.5 s); most draw only at their end."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def size_histograms(sizes: pd.DataFrame, path, max_side: int | None = None) -> None:
    """The lesson's `plt.hist(row_sz)` / `plt.hist(col_sz)`, optionally only for sides under `max_side`."""
    fig, axes = _subplots(1, 2, figsize=(10, 3.5))
    for axis, column in zip(axes, ("width", "height")):
        values = sizes[column] if max_side is None else sizes.loc[sizes[column] < max_side, column]
        axis.hist(values, bins=40, color="tab:blue")
        axis.set_xlabel(f"{column} (px)")
        axis.set_ylabel("images")
    title = "image sizes" if max_side is None else f"image sizes under {max_side} px"
    fig.suptitle(f"{title} ({len(sizes)} images)")
    save_figure(fig, path)


def lr_finder(result: dict, path) -> None:
    """fastai's `sched.plot()`: smoothed loss against learning rate, log x-axis, suggested lr marked."""
    fig, axis = _subplots(figsize=(6, 4))
    axis.plot(result["lr"], result["smoothed_loss"], label="smoothed loss")
    axis.plot(result["lr"], result["loss"], alpha=0.3, label="batch loss")
    axis.axvline(result["suggested_lr"], color="tab:red", linestyle="--",
                 label=f"suggested lr {result['suggested_lr']:.2g}")
    axis.set_xscale("log")
    # The smoothed loss stops at 4x its best: a last exploding batch loss must not squash the curve.
    axis.set_ylim(min(result["loss"]) * 0.9, max(result["smoothed_loss"]) * 1.1)
    ratios = result.get("group_ratios", [1.0])
    axis.set_xlabel("learning rate" if len(ratios) == 1 else
                    "learning rate of the last layer group (the groups' lrs: " +
                    " : ".join(f"{ratio:.2g}" for ratio in ratios) + ")")
    axis.set_ylabel("loss")
    axis.legend()
    save_figure(fig, path)


def lr_schedules(fits: list[tuple[str, list[list[float]]]], path) -> None:
    """fastai's `sched.plot_lr()` for each fit: learning rate per iteration, one line per trainable layer group."""
    fig, axes = _subplots(1, len(fits), figsize=(4.5 * len(fits), 3.5), squeeze=False)
    for axis, (title, lr_history) in zip(axes.flat, fits):
        history = np.asarray(lr_history)
        for group in range(history.shape[1]):
            axis.plot(history[:, group], label=f"group {group}")
        axis.set_yscale("log")
        axis.set_xlabel("iteration")
        axis.set_ylabel("learning rate")
        axis.set_title(title, fontsize=9)
        if history.shape[1] > 1:
            axis.legend(fontsize=8)
    save_figure(fig, path)


def image_grid(images: list[np.ndarray], path, title: str, columns: int = 3) -> None:
    """The lesson's `plots(ims)`: HxWx3 images in [0, 1] on a grid."""
    rows = int(np.ceil(len(images) / columns))
    fig, axes = _subplots(rows, columns, figsize=(3 * columns, 3 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, image in zip(axes.flat, images):
        axis.imshow(np.clip(image, 0, 1))
    fig.suptitle(title)
    save_figure(fig, path)


def titled_images(images: list[np.ndarray], titles: list[str], path, title: str, columns: int = 3) -> None:
    """HxWx3 images in [0, 1], each with its own title (fastai's `plot_top_losses`)."""
    rows = max(1, int(np.ceil(len(images) / columns)))
    fig, axes = _subplots(rows, columns, figsize=(3 * columns, 3.3 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, image, image_title in zip(axes.flat, images, titles):
        axis.imshow(np.clip(image, 0, 1))
        axis.set_title(image_title, fontsize=9)
    fig.suptitle(title, fontsize=10)
    save_figure(fig, path)


def class_extremes(grid: dict[str, dict[str, list[tuple[np.ndarray, str]]]], row_titles: list[str], per_group: int,
                   path, title: str) -> None:
    """Fastai 0.7 lesson 1's most correct / most incorrect / most uncertain images, one row per class:
    {class: {group: [(image, caption), ...]}}, `per_group` columns for each group; an empty slot says so."""
    groups = list(next(iter(grid.values())).keys()) if grid else []
    fig, axes = _subplots(max(1, len(grid)), max(1, len(groups) * per_group),
                          figsize=(1.7 * len(groups) * per_group + 1, 2.0 * len(grid) + 0.8), squeeze=False)
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
        for spine in axis.spines.values():
            spine.set_visible(False)
    for row, (label, by_group) in enumerate(grid.items()):
        axes[row, 0].set_ylabel(row_titles[row], fontsize=8, rotation=0, ha="right", va="center")
        for number, group in enumerate(groups):
            for slot in range(per_group):
                axis = axes[row, number * per_group + slot]
                if row == 0 and slot == 0:
                    axis.set_title(group, fontsize=9, loc="left", fontweight="bold")
                if slot < len(by_group[group]):
                    image, caption = by_group[group][slot]
                    axis.imshow(np.clip(image, 0, 1))
                    axis.set_xlabel(caption, fontsize=7)
                elif slot == 0:
                    axis.text(0.5, 0.5, "none", ha="center", va="center", fontsize=8, color="grey",
                              transform=axis.transAxes)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def training_curves(log: pd.DataFrame, path) -> None:
    """Train and valid loss, and accuracy, per epoch across every fit of a stage."""
    fig, (loss_axis, acc_axis) = _subplots(1, 2, figsize=(10, 3.5))
    x = np.arange(1, len(log) + 1)
    loss_axis.plot(x, log["train_loss"], marker="o", label="train (EMA)")
    loss_axis.plot(x, log["valid_loss"], marker="o", label="valid")
    loss_axis.set_xlabel("epoch")
    loss_axis.set_ylabel("NLL loss")
    loss_axis.legend()
    acc_axis.plot(x, log["accuracy"], marker="o", color="tab:green")
    acc_axis.set_xlabel("epoch")
    acc_axis.set_ylabel("valid accuracy")
    save_figure(fig, path)


def batch_losses(losses: list[tuple[str, int, float]], path, beta: float = 0.98) -> None:
    """fastai 0.7's `sched.plot_loss()`: every training batch's loss and its bias-corrected EMA, over the iterations of
    every fit of a stage, each fit shaded apart."""
    table = pd.DataFrame(losses, columns=["phase", "fit", "loss"])
    fig, axis = _subplots(figsize=(10, 3.5))
    axis.plot(table.index, table["loss"], alpha=0.3, linewidth=0.8, label="batch loss")
    smoothed = table["loss"].ewm(alpha=1 - beta, adjust=True).mean()  # adjust=True: 0.7's bias correction
    axis.plot(table.index, smoothed, color="tab:blue", label=f"smoothed (EMA {beta})")
    starts = table.index[(table[["phase", "fit"]] != table[["phase", "fit"]].shift()).any(axis=1)].tolist()
    for number, (start, end) in enumerate(zip(starts, starts[1:] + [len(table)])):
        if number % 2:
            axis.axvspan(start, end, color="grey", alpha=0.08, linewidth=0)
        axis.text(start, 1.0, f" {table['phase'][start]} {table['fit'][start]}", transform=axis.get_xaxis_transform(),
                  fontsize=7, va="top")
    axis.set_xlabel("iteration")
    axis.set_ylabel("NLL loss")
    axis.legend(fontsize=8, loc="upper right")
    save_figure(fig, path)


def confusion_matrix(matrix: np.ndarray, classes: list[str], path, title: str) -> None:
    size = max(4, 0.35 * len(classes) + 2)
    fig, axis = _subplots(figsize=(size, size))
    axis.imshow(matrix, cmap="Blues")
    if len(classes) <= 30:
        axis.set_xticks(range(len(classes)), classes, rotation=90)
        axis.set_yticks(range(len(classes)), classes)
        for (row, col), value in np.ndenumerate(matrix):
            if value:
                axis.text(col, row, int(value), ha="center", va="center", fontsize=7)
    axis.set_xlabel("predicted")
    axis.set_ylabel("actual")
    axis.set_title(title)
    save_figure(fig, path)


def reliability(curves: dict[str, tuple[np.ndarray, np.ndarray]], path, title: str, n_bins: int = 10) -> None:
    """Reliability diagram: per bin of top-class confidence, how often the top class is right; one line per
    {legend label: (top class correct, top-class confidence)}. On the diagonal, a confidence means what it says."""
    from sklearn.calibration import calibration_curve

    fig, axis = _subplots(figsize=(5, 5))
    axis.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfectly calibrated")
    for label, (correct, confidence) in curves.items():
        accuracy, mean_confidence = calibration_curve(correct, confidence, n_bins=n_bins)
        axis.plot(mean_confidence, accuracy, marker="o", label=label)
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1)
    axis.set_xlabel("confidence of the top class")
    axis.set_ylabel("accuracy")
    axis.set_title(title, fontsize=9)
    axis.legend(fontsize=8)
    save_figure(fig, path)


def fold_scores(cv: dict, path) -> None:
    """Each fold's validation log loss and accuracy (with and without TTA), their mean, and the out-of-fold figure."""
    folds = pd.DataFrame(cv["folds"])
    fig, axes = _subplots(1, 2, figsize=(10, 3.5))
    panels = ((axes[0], "valid_logloss", "oof_logloss"), (axes[1], "valid_accuracy", "oof_accuracy"))
    for axis, metric, oof_key in panels:
        positions = np.arange(len(folds))
        axis.bar(positions - 0.2, folds[f"{metric}_no_tta"], width=0.4, label="no TTA", color="tab:gray")
        axis.bar(positions + 0.2, folds[metric], width=0.4, label="TTA", color="tab:blue")
        axis.axhline(folds[metric].mean(), color="tab:blue", linestyle=":",
                     label=f"mean of folds {folds[metric].mean():.3f}")
        axis.axhline(cv[oof_key], color="tab:red", linestyle="--", label=f"out-of-fold {cv[oof_key]:.3f}")
        axis.set_xticks(positions, [f"fold {fold}" for fold in folds["fold"]])
        axis.set_ylabel(metric.replace("valid_", "validation "))
        axis.legend(fontsize=8)
    fig.suptitle(f"{cv['n_folds']} folds, {cv['n_oof']} out-of-fold predictions")
    save_figure(fig, path)


def member_correlation(matrix: np.ndarray, names: list[str], path, title: str) -> None:
    """A blend's members against each other: an annotated heatmap of a correlation matrix, -1 blue to +1 red."""
    size = max(3.5, 0.6 * len(names) + 2)
    fig, axis = _subplots(figsize=(size + 1, size))
    image = axis.imshow(matrix, cmap="RdBu_r", vmin=-1, vmax=1)
    axis.set_xticks(range(len(names)), names, rotation=45, ha="right")
    axis.set_yticks(range(len(names)), names)
    for (row, col), value in np.ndenumerate(matrix):
        axis.text(col, row, f"{value:.2f}", ha="center", va="center", fontsize=8,
                  color="white" if abs(value) > 0.6 else "black")  # readable on the dark ends of the scale
    fig.colorbar(image, ax=axis, shrink=0.8)
    axis.set_title(title, fontsize=9)
    save_figure(fig, path)
