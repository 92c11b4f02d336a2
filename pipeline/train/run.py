"""What every training stage (train_head, finetune) does around its fits: start, resume, plot, save, finish.

A stage builds its model and its batches; a `TrainingRun` holds the rest: the device, the epoch log, the resume
point, the optimiser the recipe asks for, the regularisers of its image fits with their EMA of the weights, and the
outputs both stages write (log.csv, lr_schedule.png, curves.png, batch_loss.png, model.pt), written by rank 0 alone
under torchrun.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import pandas as pd
from torch import nn

from pipeline import cli
from pipeline.compute import distributed
from pipeline.report import plots
from pipeline.compute import runtime
from pipeline.train.fit import EpochLog, OptimizerSpec, Phase, ResumePoint, run_fits
from pipeline.io import params_digest, remove_stale_temporaries
from pipeline.models.classifier import Classifier, checkpoint_meta, save_checkpoint, set_drop_path
from pipeline.train.regularise import OFF, Regularisation, averaged_model


class TrainingRun:
    """One training stage's run, writing into `out_dir`; `params` is its filled slice (cli.stage_parser)."""

    def __init__(self, stage: str, params, threads: int | None, out_dir: str | Path):
        self.stage, self.params, self.out_dir = stage, params, Path(out_dir)
        self.started = cli.announce(stage, params)
        self.device, self.precision = runtime.start(params, threads)
        self.main_rank = distributed.is_main()  # under torchrun (`devices: N`), rank 0 alone writes
        if self.main_rank:
            remove_stale_temporaries(self.out_dir)
        self.log = EpochLog(self.out_dir / "log.csv")
        self.optimizer = OptimizerSpec.from_params(params)
        self.resume: ResumePoint | None = None
        # The stage's regularisers (its augmented fits' for the head), and the EMA of the weights they may ask for.
        self.regularisation = Regularisation.from_section(params["regularise"])
        self.averaged = None
        # Digests of the slice as passed: a workflow run's resume key and checkpoint hash are those of its rule's slice.
        self.params_hash = params_digest(params.as_passed)

    def resume_point(self, model: nn.Module, input_file: str | Path, **key_extras) -> str:
        """Resume an interrupted run of this slice on this input (and `key_extras`); returns the resume key."""
        key = params_digest({**self.params.as_passed, **key_extras}, input_file)
        self.resume = ResumePoint(self.out_dir / "resume.pt", key, model, self.log)
        return key

    def regularise(self, model: Classifier) -> Regularisation:
        """Before the fits on images: the model's drop path, and an EMA of its weights if the recipe asks for one."""
        try:
            set_drop_path(model, self.regularisation.drop_path)
        except ValueError as problem:  # a timm body without residual blocks: the recipe check knows only the library
            cli.fail(str(problem))
        self.averaged = averaged_model(model, self.regularisation)
        return self.regularisation

    def fit(self, model: nn.Module, train_batches, valid_batches, fits: list[dict], phase: str,
            schedules: list | None = None, on_cycle_end: Callable[[int], None] | None = None,
            regularisation: Regularisation = OFF) -> list:
        """The recipe's `fits` in order (pipeline.train.fit.run_fits), resumable, logged under `phase`."""
        fitting = Phase(name=phase, model=model, train_batches=train_batches, valid_batches=valid_batches,
                        device=self.device, log=self.log, warmup=self.params["warmup"], precision=self.precision,
                        seed=self.params["seed"], resume=self.resume, optimizer_spec=self.optimizer,
                        regularisation=regularisation, averaged=self.averaged)
        return run_fits(fitting, fits, schedules=schedules, on_cycle_end=on_cycle_end)

    def weights(self, model: Classifier) -> Classifier:
        """What validation saw and what is saved: the EMA of the weights when there is one."""
        return self.averaged.module if self.averaged is not None else model

    def checkpoint_meta(self, model: Classifier, classes: list[str], kind: str) -> dict:
        """checkpoint_meta (its `amp`: validation's precision, what predict repeats), plus the regularisers the weights
        were trained with and whether their training steps ran under bf16 autocast (`amp_training`)."""
        return {**checkpoint_meta(params=self.params, classes=classes, stage=kind, model=model,
                                  amp=self.precision.infer, params_hash=self.params_hash),
                "amp_training": self.precision.train, "regularise": self.params["regularise"]}

    def save(self, model: Classifier, schedules: list, meta: dict) -> None:
        """The three training plots and model.pt (rank 0)."""
        if self.main_rank:
            plots.lr_schedules(schedules, self.out_dir / "lr_schedule.png")
            plots.training_curves(pd.DataFrame(self.log.rows), self.out_dir / "curves.png")
            plots.batch_losses(self.log.batch_losses, self.out_dir / "batch_loss.png")
            save_checkpoint(self.weights(model), self.out_dir / "model.pt", meta)

    def finish(self) -> None:
        """Once every output is written: the resume point goes, torchrun's process group ends."""
        self.resume.finish()
        distributed.finish()
        cli.finish(self.stage, self.started)
