"""A sweep in MLflow: one run for the sweep (run_kind `sweep`), one nested run per trial (run_kind `sweep_trial`)
tagged with its study, trial number, member and state (COMPLETE, PRUNED or FAIL), with the swept values as params
and its scores as metrics. A resumed sweep continues its run and logs only the trials not logged yet."""
from __future__ import annotations

from pathlib import Path

from pipeline.tracking import mlflow_log
from pipeline.tracking.mlflow_log import MLFLOW_PARENT_RUN_ID, MlflowClient

SWEEP, TRIAL = "sweep", "sweep_trial"


class SweepRuns:
    def __init__(self, uri: str, experiment: str, study: str, out_dir: str, params: dict):
        self.uri, self.study = uri, study
        self.client = MlflowClient(tracking_uri=uri)
        with mlflow_log.store_lock(uri):
            self.experiment = mlflow_log.experiment_id(self.client, experiment)
            found = self.client.search_runs(
                [self.experiment], f"tags.run_kind = '{SWEEP}' and tags.sweep_study = '{study}' and "
                f"tags.out_dir = '{out_dir}'", max_results=1)
            if found:
                self.run_id = found[0].info.run_id
                self.client.update_run(self.run_id, status="RUNNING")
            else:
                self.run_id = self.client.create_run(
                    self.experiment, run_name=f"sweep {study}",
                    tags={"run_kind": SWEEP, "sweep_study": study, "out_dir": out_dir}).info.run_id
                mlflow_log._log(self.client, self.run_id, params=params)
            children = self.client.search_runs([self.experiment], f"tags.mlflow.parentRunId = '{self.run_id}'")
        self.logged = {int(run.data.tags["sweep_trial"]) for run in children if "sweep_trial" in run.data.tags}

    def trial(self, number: int, member: str, state: str, values: dict, metrics: dict) -> None:
        if number in self.logged:
            return
        with mlflow_log.store_lock(self.uri):
            run = self.client.create_run(
                self.experiment, run_name=f"{self.study} trial {number}",
                tags={MLFLOW_PARENT_RUN_ID: self.run_id, "run_kind": TRIAL, "sweep_study": self.study,
                      "sweep_trial": str(number), "member": member, "state": state})
            mlflow_log._log(self.client, run.info.run_id, {k: v for k, v in metrics.items() if v is not None},
                            {key: str(value) for key, value in values.items()})
            self.client.set_terminated(run.info.run_id, "FINISHED" if state != "FAIL" else "FAILED")
        self.logged.add(number)

    def finish(self, metrics: dict, files: list[Path]) -> None:
        with mlflow_log.store_lock(self.uri):
            mlflow_log._log(self.client, self.run_id, {k: v for k, v in metrics.items() if v is not None})
            for path in files:
                if path.exists():
                    self.client.log_artifact(self.run_id, str(path))
            self.client.set_terminated(self.run_id, "FINISHED")
