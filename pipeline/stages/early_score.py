"""Sweeps - a member's validation loss after its first fine-tune size (its head's, with no fine-tuning): what a
sweep's pruner compares with the other trials' before it lets a trial train on. The last epoch's `valid_loss` of each
fold's log.csv, and their mean; and which logs they are (an earlier member's, where the chain shares that stage).

    python -m pipeline.stages.early_score --logs out/members/t1/folds/0/finetune/1_224/log.csv ... \
        --stage finetune/1_224 --out out/members/t1/sweep/early_score.json
"""
from __future__ import annotations

import math

import pandas as pd

from pipeline import cli
from pipeline.io import write_json


def last_valid_loss(log_csv: str) -> float:
    log = pd.read_csv(log_csv)
    if log.empty or "valid_loss" not in log or not math.isfinite(loss := float(log["valid_loss"].iloc[-1])):
        cli.fail(f"{log_csv}: no finite valid_loss in its last epoch")
    return loss


def main(argv: list[str] | None = None) -> None:
    parser = cli.stage_parser(__doc__)
    parser.add_argument("--logs", nargs="+", required=True, help="each fold's log.csv of the stage")
    parser.add_argument("--stage", required=True, help="which stage the logs are of, for the record")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    started = cli.announce("early_score", {"stage": args.stage})
    losses = [last_valid_loss(path) for path in args.logs]
    score = {"stage": args.stage, "valid_loss": sum(losses) / len(losses), "folds": losses, "logs": args.logs}
    write_json(score, args.out)
    print(f"{args.stage}: valid loss {score['valid_loss']:.4f} (mean of {len(losses)})", flush=True)
    cli.finish("early_score", started)


if __name__ == "__main__":
    main()
