"""python -m pipeline.sweep: tune a recipe with an Optuna study whose trials are members of the workflow.

    python -m pipeline.sweep --configfile config/demo.yaml config/demo_kfold.yaml --space config/sweep_demo.yaml \
        --trials 8 --parallel 2 [--study demo] [--profile profiles/slurm] [--blend-top 3]

Each trial is a member (<study>_t<n>) with the trial's values as its overrides, on the recipe's folds and out_dir:
Snakemake computes only what a trial changes, and P trials run side by side as one DAG. A trial is scored by its
calibrated out-of-fold log loss (a K-fold recipe) or validation log loss (a single split); after its first fine-tune
size the pruner may stop it. At the end the best trial is rerun with a fresh seed (the confirmation run), and
out_dir/sweep/<study>/ holds trials.csv, best.yaml, the plots and report.html. Rerunning the command continues the
study (docs/sweeps.md).
"""
from __future__ import annotations

import argparse
import sys

from pipeline import cli
from pipeline.recipe import files as recipe_files
from pipeline.recipe import members, space
from pipeline.recipe.space import Settings, SpaceError
from pipeline.sweep import study as studies
from pipeline.sweep import trials as runs
from pipeline.sweep.plan import Sweep, SweepFailed, SweepRefused


def parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configfile", nargs="+", required=True, metavar="RECIPE",
                   help="the recipe files, as for snakemake")
    p.add_argument("--space", required=True, help="the search space: recipe keys to distributions (docs/sweeps.md)")
    p.add_argument("--trials", type=int, required=True, help="finished trials (complete or pruned) the study ends with")
    p.add_argument("--parallel", type=int, default=1, help="trials run side by side, as one Snakemake DAG")
    p.add_argument("--study", default="sweep", help="the study's name (letters and digits): several in one out_dir")
    p.add_argument("--profile", help="a Snakemake profile for the trials' jobs: profiles/gpu, profiles/slurm, a folder")
    p.add_argument("--cores", default="all", help="Snakemake's --cores without a profile (default all)")
    p.add_argument("--blend-top", type=int, default=0, metavar="K",
                   help="also blend the best K trials on their out-of-fold predictions (K-fold recipes)")
    p.add_argument("--seed", type=int, default=0, help="the sampler's seed")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def prepared(args: argparse.Namespace) -> Sweep:
    """Every check that can be made before a trial runs; SweepRefused lists what fails."""
    problems = []
    if args.trials < 1:
        problems.append(f"--trials: {args.trials}; a sweep needs at least 1 trial")
    if args.parallel < 1:
        problems.append(f"--parallel: {args.parallel}; at least 1 trial runs at a time")
    if not studies.STUDY_NAME.match(args.study):
        problems.append(f"--study: {args.study!r}; a study's name is letters and digits, starting with a letter "
                        "(its trials are members named <study>_t<n>)")
    if args.profile and runs.profile_dir(args.profile) is None:
        problems.append(f"--profile: {args.profile!r} is not a folder with a config.yaml, as given or under "
                        f"{runs.PROFILES} ({', '.join(sorted(p.name for p in runs.PROFILES.iterdir()))})")
    sources, file_problems = recipe_files.read_all(args.configfile)
    problems += file_problems
    if file_problems:
        raise SweepRefused(problems)
    recipe: dict = {}
    for _, written in sources:
        recipe = members.merged(recipe, written)
    problems += [f"{key}: the recipe already has {key}; sweep a recipe of one model (each trial becomes a member)"
                 for key in ("members", "blend", "pseudo") if key in recipe]
    try:
        dimensions, settings = space.load(args.space, recipe)
    except SpaceError as error:
        problems += error.problems
        dimensions, settings = [], Settings()
    from pipeline.recipe.defaults import filled
    from pipeline.workflow.recipe_check import RecipeRefused, checked

    try:
        checked_recipe = checked(recipe, sources)
    except RecipeRefused as refused:
        raise SweepRefused(problems + [f"the recipe: {problem}" for problem in refused.problems]) from None
    kfold = bool(checked_recipe.folds)
    if args.blend_top and not kfold:
        problems.append("--blend-top: blending needs out-of-fold predictions, so a K-fold recipe (split.folds)")
    if args.blend_top and not 2 <= args.blend_top <= args.trials:
        problems.append(f"--blend-top: {args.blend_top}; blend between 2 and --trials ({args.trials}) trials")
    if problems:
        raise SweepRefused(problems)
    out_dir = filled(recipe)["out_dir"]
    return Sweep(args=args, recipe=recipe, sources=sources, dimensions=dimensions, settings=settings, out_dir=out_dir,
                 kfold=kfold, folder=studies.folder(out_dir, args.study))


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        sweep = prepared(args)
    except SweepRefused as refused:
        for problem in refused.problems:
            print(f"error: {problem}", file=sys.stderr)
        raise SystemExit(1) from None
    with cli.one_line_errors(args.debug, (studies.StudyBusy, SweepFailed)):
        from pipeline.sweep.driver import drive

        drive(sweep)
