# One run per out_dir, and on a cluster no job that no node can run: checked when the run starts.
from pipeline.workflow import slurm_check
from pipeline.workflow.run_lock import OutDirInUse, hold

# One run per out_dir, from whichever working directory: held from the first job to the end of the run (a dry run,
# or one with nothing to do, takes nothing).
HELD_LOCKS = []  # the open lock file: the flock lasts as long as it stays open


def slurm_requests():
    """What each cluster job of this run will ask Slurm for, once per distinct request."""
    requests = set()
    for job in workflow.dag.needrun_jobs():
        if job.is_local:
            continue
        mem_mb = job.resources.get("mem_mb")
        requests.add(
            slurm_check.Request(
                job.rule.name,
                job.resources.get("slurm_partition"),
                int(job.resources.get("cpus_per_task") or job.threads),
                mem_mb if isinstance(mem_mb, int) else None,
            )
        )
    return sorted(requests, key=lambda request: request.rule)


onstart:
    try:
        HELD_LOCKS.append(hold(OUT))
    except OutDirInUse as in_use:
        raise WorkflowError(str(in_use))
    # On a cluster, a job no node can run would wait in the queue for ever: stop before submitting anything.
    if getattr(workflow.executor_plugin, "name", None) == "slurm" and (cluster := slurm_check.cluster_partitions()):
        if problems := slurm_check.request_problems(slurm_requests(), *cluster):
            raise WorkflowError("jobs no node of the cluster can run:\n" + "\n".join(f"  - {p}" for p in problems))
