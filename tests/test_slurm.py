"""The shipped Slurm profile on a real one-node cluster (tests/cluster/slurm_up.sh starts it): the K-fold test recipe
over two of its folds through `snakemake --profile profiles/slurm`, every compute stage a Slurm job via `sbatch`, the
folds side by side, and its outputs equal to those of the same folds in the local blend run (its member a is this
recipe).

Where Slurm cannot be installed or started the tests skip, saying why; with LESSON2_REQUIRE_SLURM=1 (set by
.ci/run) they fail instead, so CI always runs them.
"""
import json
import os
import re
import subprocess

import pandas as pd
import pytest

from conftest import CONFIGS, REPO, TEST_CORES, snakemake_command, write_override

pytestmark = [pytest.mark.slurm, pytest.mark.workflow]

SLURM_UP = REPO / "tests" / "cluster" / "slurm_up.sh"
# The stages that do the work run as Slurm jobs; the seconds-long ones are localrules (see rules/*.smk).
CLUSTER_RULES = {"image_stats", "resize", "precompute", "train_head", "finetune", "tta"}


@pytest.fixture(scope="module")
def slurm_conf():
    """SLURM_CONF of a running one-node cluster; started here (and stopped afterwards) unless already up."""
    was_up = subprocess.run(["bash", SLURM_UP, "status"], capture_output=True).returncode == 0
    started = subprocess.run(["bash", SLURM_UP, "start"], capture_output=True, text=True, timeout=900)
    if started.returncode != 0:
        reason = f"no Slurm cluster on this machine: {started.stderr.strip()[-600:]}"
        if os.environ.get("LESSON2_REQUIRE_SLURM") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    conf = started.stdout.strip().splitlines()[-1].removeprefix("SLURM_CONF=")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SLURM_CONF", conf)  # for the plugin's sbatch / squeue, and for scontrol below
        yield conf
    if not was_up:
        subprocess.run(["bash", SLURM_UP, "stop"], capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def slurm_run(slurm_conf, tmp_path_factory, request):
    """Folds 0 and 1 of the K-fold test recipe (the blend's folds) through the shipped profile, with the documented
    override for nodes with fewer CPUs than the profile asks for (--max-threads), job logs kept, and status checks
    from the first second. The local blend run it is compared with computes meanwhile: the cluster run mostly waits
    on job-status polls. Members would add no Slurm behaviour of their own, only more of the same jobs."""
    work = tmp_path_factory.mktemp("slurm_run")
    two_folds = write_override(work / "two_folds.yaml", split={"method": "stratified_kfold", "n_folds": 3,
                                                               "folds": [0, 1]})
    command = snakemake_command(REPO, work, "--profile", str(REPO / "profiles" / "slurm"), "--max-threads",
                                str(TEST_CORES),
                                "--slurm-keep-successful-logs", "--slurm-logdir", str(work / "slurm_logs"),
                                "--slurm-init-seconds-before-status-checks", "1",
                                configfiles=[CONFIGS / "kfold_csv.yaml", two_folds])
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as run:
        try:
            request.getfixturevalue("blend_run")
        finally:
            output, _ = run.communicate(timeout=1200)
    assert run.returncode == 0, output[-6000:]
    return work


def slurm_jobs(work) -> list[tuple[str, dict]]:
    """(rule, Slurm's record of its job) for every job this run submitted (their ids name the plugin's log files)."""
    jobs = []
    for log in sorted((work / "slurm_logs").rglob("*.log")):
        record = subprocess.run(["scontrol", "show", "job", "--oneliner", log.stem], capture_output=True,
                                text=True, check=True).stdout
        fields = dict(re.findall(r"(\w+)=(\S*)", record))
        jobs.append((log.relative_to(work / "slurm_logs").parts[0].removeprefix("rule_"), fields))
    return jobs


def test_every_compute_stage_ran_as_a_slurm_job_and_none_asked_for_a_gpu(slurm_run):
    jobs = slurm_jobs(slurm_run)
    assert {rule for rule, _ in jobs} == CLUSTER_RULES, "the torch and image stages go through sbatch; localrules stay local"
    for rule, job in jobs:
        assert job["JobState"] == "COMPLETED", (rule, job["JobState"])
        assert job["Partition"] == "main"  # the cluster's default partition: the profile names none
        # The recipe's device is cpu: no job asks for a GPU (Slurm has none to give here, so one would never run).
        assert "gpu" not in job.get("TresPerJob", "") + job.get("TresPerNode", "") + job.get("TRES", "")
    by_rule = {rule: [job for name, job in jobs if name == rule] for rule in CLUSTER_RULES}
    assert len(by_rule["train_head"]) == 2  # 2 folds, one job each
    assert by_rule["finetune"][0]["Comment"].startswith("rule_finetune")
    assert int(by_rule["train_head"][0]["NumCPUs"]) == TEST_CORES  # --max-threads capped the profile's 8 threads
    # The MLflow logging is a local rule: it ran where Snakemake ran, into the store in that directory.
    mark = json.loads((slurm_run / "out" / "tracking" / "run.json").read_text())
    assert mark["status"] == "logged" and mark["uri"] == "sqlite:///mlflow.db" and (slurm_run / "mlflow.db").is_file()


def test_folds_ran_side_by_side_on_the_cluster(slurm_run):
    """The folds are independent jobs: with a core per job, the node ran some of them at once."""
    training = [job for rule, job in slurm_jobs(slurm_run) if rule in ("train_head", "finetune", "tta")]
    spans = [(job["StartTime"], job["EndTime"]) for job in training]
    assert any(start_b < end_a and start_a < end_b for i, (start_a, end_a) in enumerate(spans)
               for start_b, end_b in spans[i + 1:]), spans


def test_outputs_equal_the_local_runs(slurm_run, blend_run):
    """Same recipe and data, same split; each fold's models trained by the same CPU code with the same threads and
    seeds, so their metrics equal those of the local blend's member a (the same recipe) to 1e-6 (deterministic
    kernels; the slack is for printing)."""
    here, local = slurm_run / "out", blend_run / "out"
    for name in ("split.csv", "test.csv"):
        assert (here / name).read_bytes() == (local / name).read_bytes(), name
    for fold in (0, 1):
        cluster, member_a = here / "folds" / str(fold), local / "members" / "a" / "folds" / str(fold)
        assert (cluster / "split.csv").read_bytes() == (member_a / "split.csv").read_bytes(), fold
        cluster_metrics = json.loads((cluster / "metrics.json").read_text())
        local_metrics = json.loads((member_a / "metrics.json").read_text())
        for key in ("valid_logloss", "valid_accuracy", "valid_logloss_no_tta", "valid_accuracy_no_tta"):
            assert cluster_metrics[key] == pytest.approx(local_metrics[key], abs=1e-6), (fold, key)
    submission, local_submission = pd.read_csv(here / "submission.csv"), pd.read_csv(local / "submission.csv")
    assert submission["id"].tolist() == local_submission["id"].tolist()
    assert list(submission.columns) == list(local_submission.columns)


def test_a_job_no_node_can_run_stops_the_run_before_anything_is_submitted(slurm_conf, tmp_path):
    """Slurm would leave such a job PENDING for ever (Reason=PartitionConfig) and Snakemake would wait on it."""
    node_cpus = int(subprocess.run(["sinfo", "--noheader", "--format=%c"], capture_output=True, text=True,
                                   check=True).stdout.split()[0].rstrip("+"))
    command = snakemake_command(REPO, tmp_path, "--profile", str(REPO / "profiles" / "slurm"),
                                "--set-resources", f"image_stats:cpus_per_task={node_cpus + 1}",
                                configfiles=[CONFIGS / "kfold_csv.yaml"])
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert (f"rule image_stats asks for {node_cpus + 1} CPUs; the largest node of partition main has {node_cpus} "
            f"(pass --max-threads {node_cpus}") in output, output[-3000:]
    assert not (tmp_path / "data").exists() and not (tmp_path / "out" / "stats").exists()  # not even a local job
