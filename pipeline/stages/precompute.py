"""Stage 3 - precompute: the backbone's pooled activations of the un-augmented train / valid / test images.

fastai 0.7's `precompute=True`: body in eval mode, AdaptiveConcatPool, validation transform (shorter side to sz,
centre crop) at the first training size (test: the usable images, in test.csv order). Each split streams batch by batch into a memory-mapped .npy, so no
split's activations are ever held in RAM at once. `manifest.json` records what determines the cache (split,
backbone, weights, size, a digest of the backbone's weights) and the head stage checks it.

    python -m pipeline.stages.precompute --split-csv out/split.csv --test-csv out/test.csv --cache-dir out/resized/340 \
        --out-dir out/activations/224 --params '{"arch": "resnet34", "weights": "imagenet", "size": 224}'
"""
from __future__ import annotations

from pathlib import Path

import torch
from tqdm import tqdm

from pipeline import cli
from pipeline.compute import runtime
from pipeline.data.dataset import read_split, read_test_table
from pipeline.io import file_digest, open_npy_for_writing, remove_stale_temporaries, write_json
from pipeline.recipe import defaults as recipe_defaults
from pipeline.train.loaders import ImageDataset, inference_loader
from pipeline.models.classifier import WeightsError, build_seeded_classifier, preprocessing_of
from pipeline.data.transforms import valid_transform

SPLITS = ("train", "valid", "test")
# The slice (pipeline.workflow.slices): where its keys come from in the recipe, and what the workflow adds. No ps /
# xtra_fc: the head built alongside the body is never used here and the body does not depend on them, so editing them
# must not rerun this stage; the schema's defaults build that unused head.
RECIPE_KEYS = ("seed", "device", "amp", "model.arch", "model.weights", "head.size", "loader")
WORKFLOW_KEYS = ("weights_digest", "preprocessing")
UNUSED_HEAD = recipe_defaults.defaults(("model.ps", "model.xtra_fc"))


@torch.inference_mode()
def precompute_activations(model, loader, out_path: Path, device: torch.device, amp: bool, desc: str) -> None:
    model.eval()
    with open_npy_for_writing(out_path, (len(loader.dataset), model.n_features)) as activations:
        start = 0
        for x, _ in tqdm(loader, desc=desc, disable=None):
            x = runtime.batch_on_device(x, device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                features = model.features(x)
            activations[start: start + len(x)] = features.float().cpu().numpy()
            start += len(x)


def main(argv: list[str] | None = None) -> None:
    parser = cli.stage_parser(__doc__, RECIPE_KEYS, WORKFLOW_KEYS)
    parser.add_argument("--split-csv", required=True)
    parser.add_argument("--test-csv", required=True)
    parser.add_argument("--cache-dir", required=True, help="the resize cache")
    parser.add_argument("--out-dir", required=True)
    args, params, started = cli.begin("precompute", parser, argv)
    device, precision = runtime.start(params, args.threads)
    train, valid, classes = read_split(args.split_csv)
    test = read_test_table(args.test_csv).query("usable").reset_index(drop=True)
    with cli.stopping_on(WeightsError):
        model = build_seeded_classifier(params.updated(**UNUSED_HEAD), len(classes))
    body_digest = runtime.state_digest(model.body)
    model = runtime.on_device(model, device)
    preprocessing = preprocessing_of(params)
    transform = valid_transform(params["size"], preprocessing=preprocessing)
    out_dir = Path(args.out_dir)
    remove_stale_temporaries(out_dir)
    for name, frame in zip(SPLITS, (train, valid, test)):
        dataset = ImageDataset(args.cache_dir, frame["path"], frame.get("y"), transform)
        loader = inference_loader(dataset, params, device)
        precompute_activations(model=model, loader=loader, out_path=out_dir / f"{name}.npy", device=device,
                               amp=precision.infer, desc=f"precompute {name}")
        print(f"{name}: {len(frame)} x {model.n_features} activations -> {out_dir / f'{name}.npy'}", flush=True)
    write_json({"arch": params["arch"], "weights": params["weights"],
                "weights_digest": params.get("weights_digest"), "preprocessing": preprocessing, "size": params["size"],
                "n_features": model.n_features, "classes": classes, "split_digest": file_digest(args.split_csv),
                "test_digest": file_digest(args.test_csv), "body_digest": body_digest,
                "counts": {"train": len(train), "valid": len(valid), "test": len(test)}},
               out_dir / "manifest.json")
    cli.finish("precompute", started)


if __name__ == "__main__":
    main()
