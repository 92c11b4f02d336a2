"""The sweep's loop: ask the study for P trials, run them to their first fine-tune size as one Snakemake DAG, prune
the ones the pruner stops, run the rest to their scores, tell the study; then the confirmation run, the blend of the
best trials, and the results."""
from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import optuna

from pipeline.io import write_text
from pipeline.recipe import space
from pipeline.sweep import results
from pipeline.sweep import study as studies
from pipeline.sweep import trials as runs
from pipeline.sweep.plan import Sweep, SweepFailed

optuna.logging.set_verbosity(optuna.logging.WARNING)  # the sweep prints its own line per trial
# A space whose values the workflow refuses this often (per trial asked for) is a space to narrow, not to keep sampling.
REFUSALS_PER_TRIAL = 3


class Driver:
    def __init__(self, sweep: Sweep, study: optuna.Study):
        self.sweep, self.study = sweep, study
        self.name = sweep.args.study
        self.distributions = studies.distributions(sweep.dimensions)
        self.snakemake = runs.Snakemake(configfiles=sweep.args.configfile, members_file=sweep.folder / "members.yaml",
                                        log_dir=sweep.folder / "logs", cores=sweep.args.cores,
                                        profile=sweep.args.profile, parallel=sweep.args.parallel)
        self.tracking = tracking_runs(sweep)
        self.extra_members: dict[str, dict] = {}

    # The trials as members
    def overrides(self, trial) -> dict:
        return space.overrides(self.sweep.recipe, studies.values(trial, self.sweep.dimensions), self.sweep.dimensions)

    def write_members(self) -> None:
        """Every trial so far, in order: a trial whose chain agrees with an earlier one's up to a stage reads that
        stage's outputs from the earlier trial (pipeline.workflow.chain.share_work), finished or not."""
        trials = {runs.member(self.name, trial.number): self.overrides(trial)
                  for trial in self.study.get_trials(deepcopy=False)
                  if trial.params and "refused" not in trial.user_attrs}
        runs.write_members(self.snakemake.members_file, {**trials, **self.extra_members})

    def refusal(self, trial) -> str | None:
        """Why the workflow would refuse the trial's recipe (a value the space allows that the recipe cannot run
        with: 8 TTA passes where deterministic TTA has 5 views), checked as planning checks it; None if it runs."""
        from pipeline.workflow.recipe_check import RecipeRefused, checked

        with_trial = {**self.sweep.recipe, "members": {runs.member(self.name, trial.number): self.overrides(trial)}}
        try:
            checked(with_trial, self.sweep.sources)
        except RecipeRefused as refused:
            return "; ".join(refused.problems)
        return None

    def run_batch(self, batch: list) -> list:
        """Runs the batch's trials; returns those the workflow refused before running them."""
        refused = []
        for trial in batch:
            trial.set_user_attr("member", runs.member(self.name, trial.number))
            if reason := self.refusal(trial):
                trial.set_user_attr("refused", reason)
                self.tell(trial, optuna.trial.TrialState.FAIL, f"refused by the workflow's checks: {reason}")
                refused.append(trial)
        batch = [trial for trial in batch if trial not in refused]
        if not batch:
            return refused
        self.write_members()
        names = {trial.number: runs.member(self.name, trial.number) for trial in batch}
        targets = [str(runs.early_score_file(self.sweep.out_dir, names[trial.number])) for trial in batch]
        _, log, _ = self.snakemake.run(targets, f"trials_{'_'.join(map(str, names))}_early")
        ran = runs.jobs_by_member(log)
        going = []
        for trial in batch:
            loss = runs.read_score(runs.early_score_file(self.sweep.out_dir, names[trial.number]), "valid_loss")
            if loss is None:
                self.fail(trial, log)
                continue
            trial.report(value=loss, step=0)
            if self.trained_its_early_stage(trial) and trial.should_prune():
                trial.set_user_attr("jobs_run", dict(ran.get(names[trial.number], {})))
                self.tell(trial, optuna.trial.TrialState.PRUNED, f"pruned after {self.early_stage()}: valid loss "
                          f"{loss:.4f}, cut by the {self.sweep.settings.pruner} pruner against the trials before")
            else:
                going.append(trial)
        if not going:
            return refused
        targets = [str(runs.score_file(self.sweep.out_dir, names[trial.number])) for trial in going]
        _, log, _ = self.snakemake.run(targets, f"trials_{'_'.join(str(t.number) for t in going)}_score")
        for member, counts in runs.jobs_by_member(log).items():
            ran.setdefault(member, Counter()).update(counts)
        for trial in going:
            scores = runs.read_json_or_none(runs.score_file(self.sweep.out_dir, names[trial.number]))
            if scores is None:
                self.fail(trial, log)
                continue
            trial.set_user_attr("jobs_run", dict(ran.get(names[trial.number], {})))
            trial.set_user_attr("accuracy", scores["accuracy"])
            trial.set_user_attr("logloss_tta", scores["logloss_tta"])
            self.tell(trial, optuna.trial.TrialState.COMPLETE, f"{scores['scope']} log loss {scores['logloss']:.4f}"
                      f" (calibrated), accuracy {scores['accuracy']:.4f}", scores["logloss"])
        return refused

    def early_stage(self) -> str:
        """Where trials may be pruned: the first fine-tune size's folder (the head's without fine-tuning)."""
        steps = self.filled()["finetune"]
        return f"finetune/1_{steps[0]['size']}" if steps else "head"

    def trained_its_early_stage(self, trial) -> bool:
        """Whether the trial trained its first fine-tune size itself (or its interrupted first attempt did). One that
        reads it from an earlier trial (its values change only later stages) has spent nothing yet, and its loss
        there is the earlier trial's, which says nothing of its own values: the pruner leaves it alone."""
        name = runs.member(self.name, trial.number)
        logs = runs.read_json_or_none(runs.early_score_file(self.sweep.out_dir, name))["logs"]
        owner = Path(logs[0]).relative_to(Path(self.sweep.out_dir) / "members").parts[0]
        return owner in (name, runs.member(self.name, trial.user_attrs.get("retry_of", trial.number)))

    def filled(self) -> dict:
        from pipeline.recipe.defaults import filled

        return filled(self.sweep.recipe)

    def fail(self, trial, log: Path) -> None:
        trial.set_user_attr("log", str(log))
        self.tell(trial, optuna.trial.TrialState.FAIL, f"failed; see {log}:\n{runs.failure_tail(log)}")

    def tell(self, trial, state, said: str, value: float | None = None) -> None:
        self.study.tell(trial, value, state=state)
        frozen = self.study.trials[trial.number]
        best = studies.best(self.study)
        seconds = studies.seconds(frozen)
        so_far = f"best so far {best.value:.4f} (trial {best.number})" if best else "no trial complete yet"
        done = len(studies.finished(self.study))
        print(f"[{done}/{self.sweep.args.trials}] trial {trial.number} {said} in {seconds:.0f} s; {so_far}",
              flush=True)
        self.record(frozen)

    def record(self, frozen) -> None:
        """The trial's MLflow run, once it has ended (complete, pruned, failed or interrupted)."""
        if self.tracking:
            self.tracking.trial(frozen.number, runs.member(self.name, frozen.number), frozen.state.name,
                                studies.values(frozen, self.sweep.dimensions),
                                {"score": frozen.value if frozen.state.name == "COMPLETE" else None,
                                 "early_valid_loss": frozen.intermediate_values.get(0),
                                 "accuracy": frozen.user_attrs.get("accuracy"), "seconds": studies.seconds(frozen)})

    # After the trials
    def confirm(self, best) -> dict | None:
        """The best trial's recipe again with a fresh seed: the figure its score would be without the luck of
        being picked from many (the winner's curse)."""
        seed = self.filled()["seed"] if "seed" not in self.overrides(best) else self.overrides(best)["seed"]
        name = f"{self.name}_confirm{best.number}"
        self.extra_members[name] = {**self.overrides(best), "seed": seed + 1}
        self.write_members()
        print(f"confirmation run: trial {best.number}'s recipe with seed {seed + 1} ({name})", flush=True)
        _, log, seconds = self.snakemake.run([str(runs.score_file(self.sweep.out_dir, name))], "confirm")
        scores = runs.read_json_or_none(runs.score_file(self.sweep.out_dir, name))
        if scores is None:
            print(f"confirmation run failed; see {log}:\n{runs.failure_tail(log)}", flush=True)
            return None
        return {"member": name, "seed": seed + 1, "trial": best.number, "seconds": seconds, **scores}

    def blend_top(self, k: int) -> dict | None:
        """The best k complete trials blended on their out-of-fold predictions by the blend stage, cross-fitted."""
        complete = sorted((t for t in self.study.trials if t.state == optuna.trial.TrialState.COMPLETE),
                          key=lambda trial: trial.value)[:k]
        if len(complete) < 2:
            print(f"--blend-top {k}: only {len(complete)} complete trial(s); nothing to blend", flush=True)
            return None
        folder = self.sweep.folder / f"blend_top{k}"
        names = [runs.member(self.name, trial.number) for trial in complete]
        blended = runs.blend(self.sweep.recipe, self.sweep.out_dir, names, folder,
                             self.sweep.folder / "logs" / f"blend_top{k}.log")
        alone = min(trial.user_attrs["logloss_tta"] for trial in complete)  # the blend's figure is uncalibrated too
        return {**blended, "trials": [t.number for t in complete], "best_alone": alone} if blended else None


def tracking_runs(sweep: Sweep):
    """The sweep's MLflow runs, where the recipe tracks (tracking.uri, MLFLOW_TRACKING_URI, mlflow.db); None off."""
    from pipeline.recipe.defaults import filled
    from pipeline.tracking import store

    recipe = filled(sweep.recipe)
    uri = store.store_uri(recipe["tracking"]["uri"])
    if uri is None:
        return None
    from pipeline.sweep.tracking import SweepRuns

    params = {"space": str(sweep.args.space), "recipe": " ".join(sweep.args.configfile),
              "trials": sweep.args.trials, "parallel": sweep.args.parallel, "pruner": sweep.settings.pruner}
    return SweepRuns(uri, store.experiment_name(recipe), sweep.args.study, sweep.out_dir, params)


def drive(sweep: Sweep) -> None:
    started = time.perf_counter()
    with studies.driving(sweep.folder, sweep.args.study):
        study = studies.open_study(sweep.folder, sweep.args.study, sweep.settings, sweep.args.seed)
        check_same_space(study, sweep)
        driver = Driver(sweep, study)
        if retried := studies.retry_interrupted(study):
            for number in retried:
                driver.record(study.trials[number])
            print(f"resuming study {sweep.args.study!r}: trial(s) {retried} were interrupted and are retried; "
                  f"{len(studies.finished(study))} finished trial(s) kept", flush=True)
        elif not study.trials and (baseline := studies.recipe_values(sweep.recipe, sweep.dimensions)):
            study.enqueue_trial(baseline, user_attrs={"recipe_values": True})
        elif study.trials:
            print(f"resuming study {sweep.args.study!r}: {len(studies.finished(study))} finished trial(s) kept",
                  flush=True)
        refused = 0
        while (done := len(studies.finished(study))) < sweep.args.trials:
            failed_before = failures(study)
            batch = [study.ask(driver.distributions) for _ in range(min(sweep.args.parallel, sweep.args.trials - done))]
            refusals = driver.run_batch(batch)
            refused += len(refusals)
            if refusals and refused > REFUSALS_PER_TRIAL * sweep.args.trials:
                raise SweepFailed(f"{refused} trials' values were refused by the workflow's checks, the last: "
                                  f"{refusals[-1].user_attrs['refused']}; narrow the space")
            if failures(study) - failed_before == len(batch) > len(refusals):
                raise SweepFailed(f"every trial of the batch failed (trials {[t.number for t in batch]}); the "
                                  f"Snakemake logs are in {sweep.folder / 'logs'}")
        finish(driver, study, sweep, started)


def failures(study: optuna.Study) -> int:
    return sum(trial.state == optuna.trial.TrialState.FAIL for trial in study.get_trials(deepcopy=False))


def check_same_space(study: optuna.Study, sweep: Sweep) -> None:
    """A study continues only with the space and recipe it was started with: its trials' scores would not compare."""
    identity = json.loads(json.dumps({"space": sorted((d.key, d.kind, d.bounds, d.choices) for d in sweep.dimensions),
                                      "recipe": sweep.recipe}))  # as the journal gives it back
    started_with = study.user_attrs.get("identity")
    if started_with is None:
        study.set_user_attr("identity", identity)
    elif started_with != identity:
        changed = [key for key in identity if identity[key] != started_with[key]]
        raise SweepFailed(f"study {sweep.args.study!r} was started with another {' and '.join(changed)}; its trials "
                          "would not compare with this one's: give this sweep another --study")


def finish(driver: Driver, study: optuna.Study, sweep: Sweep, started: float) -> None:
    best = studies.best(study)
    if best is None:
        raise SweepFailed("no trial completed (every one was pruned or failed); nothing to confirm")
    confirmation = study.user_attrs.get("confirmation")
    if not confirmation or confirmation.get("trial") != best.number:
        confirmation = driver.confirm(best)
        if confirmation:
            study.set_user_attr("confirmation", confirmation)
    blended = driver.blend_top(sweep.args.blend_top) if sweep.args.blend_top else None
    baseline = next((t for t in study.trials if t.user_attrs.get("recipe_values")), None)
    scope = "out-of-fold" if sweep.kfold else "validation"
    counts = {state: sum(t.state.name == state for t in study.trials) for state in ("COMPLETE", "PRUNED", "FAIL")}
    summary = [f"{len(study.trials)} trials: " + ", ".join(f"{n} {state.lower()}" for state, n in counts.items() if n)]
    if baseline and baseline.value is not None:
        summary.append(f"the recipe's own values (trial {baseline.number}): {scope} log loss {baseline.value:.4f}")
    summary.append(f"best: trial {best.number}, {scope} log loss {best.value:.4f} (calibrated)")
    if confirmation:
        summary.append(f"confirmation (trial {best.number}'s recipe, seed {confirmation['seed']}): {scope} log loss "
                       f"{confirmation['logloss']:.4f}")
    if blended:
        summary.append(f"blend of the best {sweep.args.blend_top} (trials {blended['trials']}): out-of-fold log loss "
                       f"{blended['logloss']:.4f}, cross-fitted, before calibration, against "
                       f"{blended['best_alone']:.4f} for the best of them alone ({blended['folder']})")
    summary.append(f"sweep wall time {time.perf_counter() - started:.0f} s (this invocation)")
    keys = [dim.key for dim in sweep.dimensions]
    table = results.trials_table(study, keys)
    results.write_table(table, sweep.folder / "trials.csv")
    write_text(results.best_fragment(driver.overrides(best), [
        f"Written by python -m pipeline.sweep --study {sweep.args.study}: trial {best.number}'s overrides.",
        *summary[1:-1],
        "Pass it after the recipe: snakemake --cores all --configfile " + " ".join(sweep.args.configfile)
        + f" {sweep.folder / 'best.yaml'}"]), sweep.folder / "best.yaml")
    skipped = results.write_plots(study, sweep.folder)
    results.write_report(f"Sweep {sweep.args.study}", summary, table, sweep.folder)
    for line in summary:
        print(line, flush=True)
    for name, reason in skipped.items():
        print(f"plot {name} not drawn: {reason}", flush=True)
    print(f"results: {sweep.folder} (trials.csv, best.yaml, report.html)", flush=True)
    if driver.tracking:
        driver.tracking.finish({"best_score": best.value, "confirmation_score": (confirmation or {}).get("logloss"),
                                "baseline_score": baseline.value if baseline else None,
                                "blend_top_score": (blended or {}).get("logloss")},
                               [sweep.folder / name for name in ("trials.csv", "best.yaml", "report.html",
                                                                 *results.captions())])
