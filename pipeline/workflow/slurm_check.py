"""Slurm jobs that no node could ever run, found before any is submitted (rules/onstart.smk runs this at the start of
a run with the slurm executor).

Slurm queues a job whose request exceeds every node of its partition as PENDING (Reason=PartitionConfig, or
Resources) for ever, and Snakemake waits on it without a word. So the run stops instead, naming the rule, what it
asks for and what the largest node of its partition offers; the fix is a --max-threads or --set-resources override.
"""
from __future__ import annotations

import subprocess
from dataclasses import dataclass

SINFO = ["sinfo", "--noheader", "--Node", "--format=%P|%c|%m"]


@dataclass(frozen=True)
class Request:
    rule: str
    partition: str | None  # None: the cluster's default partition
    cpus: int
    mem_mb: int | None


def partitions(sinfo_output: str) -> tuple[dict[str, tuple[int, int]], str | None]:
    """{partition: (most CPUs of a node, most memory of a node in MB)} and the default partition (sinfo's '*')."""
    largest, default = {}, None
    for line in sinfo_output.splitlines():
        if not line.strip():
            continue
        name, cpus, memory = line.strip().split("|")
        if name.endswith("*"):
            name = default = name[:-1]
        known = largest.get(name, (0, 0))
        largest[name] = (max(known[0], int(cpus)), max(known[1], int(memory.rstrip("+"))))
    return largest, default


def cluster_partitions() -> tuple[dict[str, tuple[int, int]], str | None] | None:
    """The cluster's partitions as `sinfo` reports them, or None where sinfo cannot answer (then nothing is checked
    here and Slurm itself has the last word)."""
    try:
        answer = subprocess.run(SINFO, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return partitions(answer.stdout) if answer.returncode == 0 else None


def request_problems(requests: list[Request], largest: dict[str, tuple[int, int]], default: str | None) -> list[str]:
    problems = []
    for request in requests:
        partition = request.partition or default
        if partition not in largest:
            problems.append(f"rule {request.rule}: partition {partition!r} is not one of this cluster's "
                            f"({', '.join(sorted(largest))})")
            continue
        cpus, memory = largest[partition]
        if request.cpus > cpus:
            problems.append(f"rule {request.rule} asks for {request.cpus} CPUs; the largest node of partition "
                            f"{partition} has {cpus} (pass --max-threads {cpus}, or --set-threads "
                            f"{request.rule}={cpus})")
        if request.mem_mb is not None and request.mem_mb > memory:
            problems.append(f"rule {request.rule} asks for {request.mem_mb} MB of memory; the largest node of "
                            f"partition {partition} has {memory} MB (pass --set-resources "
                            f"{request.rule}:mem_mb={memory})")
    return problems
