"""Imported by the loaders' fork server alone (pipeline.train.loaders.worker_context preloads it): torch and the
loaders loaded once for every worker, and the server killed with the stage that started it.

The server would otherwise outlive a killed stage: it exits when no process holds its liveness pipe any more, and
every worker it forks holds one end, while a worker busy in __getitem__ lives on until its parent, the server, dies
(loaders.die_with_parent). Each would wait on the other for ever, and Snakemake on the job's log pipe they hold.
"""
from pipeline.train.loaders import die_with_parent

die_with_parent()
