"""Pseudo-labels - fold k's student split: fold k's training images plus the test images fold k's teacher labels
confidently (pipeline.compete.pseudo_split). The teacher is one member's fold-k model, or the members' fold-k models blended with
the weights fitted without fold k's rows (the blend stage's `fold_weights`), so the student never learns from a model
that saw fold k's validation images. Writes the student's split.csv (fold k's rows unchanged, then one training row
per pseudo-labelled test image, fold -1, with a `pseudo` column; in soft mode also soft_<i> target columns) and a
report of how many test images were used, at what threshold, and their class balance.

    python -m pipeline.stages.pseudo_labels --fold-split out/members/a/folds/1/split.csv --test-csv out/test.csv \
        --teacher-probs out/members/a/folds/1/tta/test_probs.npy out/members/b/folds/1/tta/test_probs.npy \
        --blend-weights out/blend/weights.json --fold 1 --out out/members/a-pseudo/folds/1/split.csv \
        --report out/members/a-pseudo/folds/1/pseudo_labels.json \
        --params '{"mode": "threshold", "threshold": 0.9, "teacher": "blend"}'
"""
from __future__ import annotations

from pipeline import cli
from pipeline.compete import pseudo_split as pseudo
from pipeline.data.dataset import DataError, read_labeled_table, read_test_table
from pipeline.io import read_json, write_csv, write_json

# The slice (pipeline.workflow.slices): where its keys come from in the recipe. Not `pseudo.student`: which member
# learns is the workflow's business (the student's own folder), so naming another must not rerun the teachers' labels.
RECIPE_KEYS = ("pseudo.teacher", "pseudo.mode", "pseudo.threshold")


def fold_teacher(args, n_test: int, n_classes: int):
    """(T, C): fold k's teacher probabilities, from fold k's files (and fold k's blend weights) only."""
    member_probs = pseudo.load_teacher_probs(args.teacher_probs, n_test, n_classes)
    blend = args.params["teacher"] == pseudo.BLEND
    if blend and not args.blend_weights:
        cli.fail("pseudo.teacher is blend, which needs --blend-weights (the blend stage's weights.json)")
    if not blend and args.blend_weights:
        cli.fail(f"pseudo.teacher is the member {args.params['teacher']!r}, which takes no --blend-weights "
                 f"({args.blend_weights})")
    weights, space = (pseudo.fold_blend_weights(read_json(args.blend_weights), args.fold, args.blend_weights)
                      if blend else (None, None))
    return pseudo.teacher_probs(member_probs, args.teacher_probs, weights, space)


def main(argv: list[str] | None = None) -> None:
    parser = cli.stage_parser(__doc__, RECIPE_KEYS)
    parser.add_argument("--fold-split", required=True, help="fold k's split.csv (a teacher member's)")
    parser.add_argument("--test-csv", required=True)
    parser.add_argument("--teacher-probs", nargs="+", required=True, metavar="NPY",
                        help="each teacher member's fold-k tta/test_probs.npy, in the blend weights' member order")
    parser.add_argument("--blend-weights", help="the blend stage's weights.json (teacher blend only)")
    parser.add_argument("--fold", type=int, required=True)
    parser.add_argument("--out", required=True, help="the student's split.csv")
    parser.add_argument("--report", required=True, help="pseudo_labels.json")
    args = parser.parse_args(argv)
    params = args.params
    started = cli.announce("pseudo_labels", {**params, "fold": args.fold})
    fold_split, classes = read_labeled_table(args.fold_split)
    test = read_test_table(args.test_csv)
    try:
        pseudo.check_fold_split(fold_split, args.fold_split)
        pseudo.refuse_colliding_ids(fold_split, test, args.test_csv)
        probs = fold_teacher(args, len(test), len(classes))
        split, used = pseudo.student_split(fold_split=fold_split, test=test, probs=probs, classes=classes,
                                           mode=params["mode"], threshold=params["threshold"])
    except DataError as error:
        cli.fail(str(error))
    counts = pseudo.report(fold=args.fold, params=params, probs=probs, usable=test["usable"].to_numpy(dtype=bool),
                           used=used, classes=classes)
    write_csv(split, args.out)
    write_json(counts, args.report)
    print(pseudo.summary(counts), flush=True)
    cli.finish("pseudo_labels", started)


if __name__ == "__main__":
    main()
