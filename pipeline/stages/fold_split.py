"""K-fold runs - one fold's split: from the run's fold assignment (`split.csv` with a `fold` column), fold k's
images are the validation set and every other fold's the training set. Writes a split.csv like a single split's
(id, label, is_valid, path, fold), so every later stage of the fold runs exactly as in a single-split run.

    python -m pipeline.stages.fold_split --split-csv out/split.csv --fold 2 --out out/folds/2/split.csv
"""
from __future__ import annotations

from pipeline import cli
from pipeline.data.dataset import DataError, check_classes, class_counts, read_labeled_table
from pipeline.io import write_csv


def fold_split(assignment, fold: int):
    if "fold" not in assignment:
        raise DataError("the split has no `fold` column: it was not written for a K-fold run")
    n_folds = assignment["fold"].nunique()
    if fold not in set(assignment["fold"]):
        raise DataError(f"fold {fold} is not in the split's {n_folds} folds (0..{n_folds - 1})")
    split = assignment.assign(is_valid=assignment["fold"] == fold)
    return split[["id", "label", "is_valid", "path", "fold"]]


def main(argv: list[str] | None = None) -> None:
    parser = cli.stage_parser(__doc__)
    parser.add_argument("--split-csv", required=True, help="the K-fold run's fold assignment")
    parser.add_argument("--fold", type=int, required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    started = cli.announce("fold_split", {"fold": args.fold})
    assignment, _ = read_labeled_table(args.split_csv)
    try:
        split = fold_split(assignment, args.fold)
        check_classes(class_counts(split))
    except DataError as error:
        cli.fail(f"{args.split_csv}: {error}")
    write_csv(split, args.out)
    print(f"fold {args.fold}: {int((~split['is_valid']).sum())} train, {int(split['is_valid'].sum())} valid",
          flush=True)
    cli.finish("fold_split", started)


if __name__ == "__main__":
    main()
