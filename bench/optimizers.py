"""The demo's training chain under each optimiser choice: 0.7's SGD, AdamW (the demo's), AdamW with train_bn.

Runs what the train_head and finetune stages run (the same functions: the head on the precomputed activations, its
augmented fit through the frozen body, then every fine-tune size unfrozen), on a finished demo's split, activations
and resize cache, with the demo recipe's sizes, epochs and seed; only `train` and the lrs change per variant. Prints
each variant's validation log loss and accuracy after its last size (no TTA), and its training time.

    snakemake --cores all          # outputs/demo, once
    python bench/optimizers.py [--out outputs/demo] [--variants sgd adamw adamw_train_bn]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import yaml

from common import machine  # puts the repository on sys.path
from pipeline.recipe import defaults as recipe_defaults  # noqa: E402
from pipeline.compute import runtime
from pipeline.data.dataset import read_split  # noqa: E402
from pipeline.train.fit import EpochLog, OptimizerSpec, Phase, TensorBatches, run_fits  # noqa: E402
from pipeline.io import read_json  # noqa: E402
from pipeline.train.loaders import image_loaders  # noqa: E402
from pipeline.models.classifier import build_seeded_classifier  # noqa: E402
from pipeline.stages.train_head import load_activations  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SGD_LRS = {"head": 1.0e-2, "body": [1.0e-3, 3.0e-3, 1.0e-2]}  # the demo's lrs before AdamW (0.7's 1e-2)
# name -> (train section, lrs); the AdamW ones take the demo recipe's own lrs
VARIANTS = {
    "sgd": ({"optimizer": "sgd", "weight_decay": 0.0, "train_bn": False}, SGD_LRS),
    "adamw": ({"optimizer": "adamw", "weight_decay": 0.01, "train_bn": False}, None),
    "adamw_train_bn": ({"optimizer": "adamw", "weight_decay": 0.01, "train_bn": True}, None),
}


def with_lrs(fits: list[dict], lr) -> list[dict]:
    return [{**fit, "lr": lr} for fit in fits]


def train_variant(recipe: dict, out: Path, train: dict, lrs: dict | None) -> dict:
    head, finetune = recipe["head"], recipe["finetune"]
    if lrs:
        head = {**head, "precomputed": with_lrs(head["precomputed"], lrs["head"]),
                "augmented": with_lrs(head["augmented"], lrs["head"])}
        finetune = [{**step, "fits": with_lrs(step["fits"], lrs["body"])} for step in finetune]
    seed, device = recipe["seed"], torch.device("cpu")
    optimizer = OptimizerSpec.from_params(train)
    train_rows, valid_rows, classes = read_split(out / "split.csv")
    model = runtime.on_device(build_seeded_classifier(
        recipe_defaults.complete({**recipe["model"], "seed": seed}, ("seed", "model")), len(classes)), device)
    activations = out / "activations" / str(head["size"])
    loader_params = {**recipe["transforms"], **recipe["loader"], "seed": seed,
                     "preprocessing": read_json(activations / "manifest.json")["preprocessing"]}
    log = EpochLog(None)
    started = time.perf_counter()
    batch_size = recipe["loader"]["batch_size"]
    train_acts = TensorBatches(*load_activations(activations, "train", train_rows), batch_size, True,
                               torch.Generator())
    valid_acts = TensorBatches(*load_activations(activations, "valid", valid_rows), batch_size)
    shared = {"device": device, "log": log, "seed": seed, "optimizer_spec": optimizer}
    run_fits(Phase(name="precomputed", model=model.head, train_batches=train_acts, valid_batches=valid_acts, **shared),
             head["precomputed"])
    model.freeze()
    model.train_bn(train["train_bn"])
    train_loader, valid_loader = image_loaders(train_rows, valid_rows,
                                               out / "resized" / str(recipe["images"]["shorter_side"]),
                                               {**loader_params, "size": head["size"]}, device)
    run_fits(Phase(name="augmented", model=model, train_batches=train_loader, valid_batches=valid_loader, **shared),
             head["augmented"])
    for step in finetune:
        model.unfreeze() if step.get("unfreeze") else model.freeze()
        model.train_bn(train["train_bn"])
        train_loader, valid_loader = image_loaders(train_rows, valid_rows,
                                                   out / "resized" / str(recipe["images"]["shorter_side"]),
                                                   {**loader_params, "size": step["size"]}, device)
        run_fits(Phase(name=f"size {step['size']}", model=model, train_batches=train_loader,
                       valid_batches=valid_loader, **shared), step["fits"])
    last = log.rows[-1]
    return {"valid_logloss": round(last["valid_loss"], 4), "valid_accuracy": round(last["accuracy"], 4),
            "train_seconds": round(time.perf_counter() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "demo", help="a finished demo run")
    parser.add_argument("--recipe", type=Path, default=ROOT / "config" / "demo.yaml")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    recipe = yaml.safe_load(args.recipe.read_text())
    for name in args.variants:
        train, lrs = VARIANTS[name]
        figures = train_variant(recipe, args.out, train, lrs)
        print(json.dumps({"benchmark": f"optimizers/{name}", **train, **figures, "machine": machine()}), flush=True)


if __name__ == "__main__":
    main()
