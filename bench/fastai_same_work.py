"""fastai v2's side of `bench/fastai_compare.py`: the same work as the workflow's recipe there, with fastai's own calls.
Run by that script in a subprocess (timed with its imports); needs fastai importable, nothing from this project.

    python bench/fastai_same_work.py --data-dir D --valid-ids D/valid_ids.txt --out fastai_preds.npz [--sizes 64 96]

labels.csv (id,breed) + train/<id>.jpg + test/<id>.jpg, the validation ids given (the workflow's split), resnet18
from scratch, bs 32, one frozen fit_one_cycle epoch, then unfrozen fit_one_cycle(3) at each size, TTA with n=4 on the
test images. Writes the test ids, class names, the plain pass and the mean of the augmented passes to --out.
"""
import argparse
import os
import time

started = time.perf_counter()
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from fastai.vision.all import (Normalize, Resize, ImageDataLoaders, Path, accuracy, aug_transforms,  # noqa: E402
                               imagenet_stats, resnet18, set_seed)

try:
    from fastai.vision.all import vision_learner
except ImportError:  # fastai < 2.7
    from fastai.vision.all import cnn_learner as vision_learner

# Adam (fastai's default optimiser) with one-cycle schedules. The unfrozen lrs keep the workflow recipe's ratio
# between the earliest layer group and the rest (0.4), spread by slice() over fastai's groups.
FROZEN_LR, UNFROZEN_LR = 2e-3, slice(8e-4, 2e-3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--valid-ids", type=Path, required=True, help="one labelled id per line")
    parser.add_argument("--out", type=Path, required=True, help=".npz with ids, classes, plain, augmented")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 96])
    parser.add_argument("--epochs", type=int, default=3, help="unfrozen epochs per size")
    parser.add_argument("--bs", type=int, default=32)
    parser.add_argument("--n-aug", type=int, default=4)
    parser.add_argument("--workers", type=int, help="DataLoader num_workers (default: fastai's, min(16, cpus))")
    parser.add_argument("--timm-weights", type=Path,
                        help="pretrained: timm's tf_efficientnet_lite0 with this state dict (timm's layout)")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count())
    set_seed(42)  # the init, shuffles and augmentations (ours: the recipe's seed 42)
    phases = {"imports": time.perf_counter() - started}

    labels = pd.read_csv(args.data_dir / "labels.csv", dtype=str)
    labels["is_valid"] = labels["id"].isin(set(args.valid_ids.read_text().split()))
    loader_options = {} if args.workers is None else {"num_workers": args.workers}

    # Lite0's pretrained config normalises with mean = std = 0.5; ImageNet statistics otherwise (this project's).
    stats = ([0.5] * 3, [0.5] * 3) if args.timm_weights else imagenet_stats

    def dls_at(size: int):
        # Resize(size) from the full JPEG on every read; no flips (a mirrored digit is not that digit); the
        # normalisation is given explicitly, which vision_learner adds only for weights it downloads itself.
        return ImageDataLoaders.from_df(
            labels, path=args.data_dir, folder="train", suff=".jpg", fn_col="id", label_col="breed",
            valid_col="is_valid", item_tfms=Resize(size), bs=args.bs, seed=42,
            batch_tfms=[*aug_transforms(do_flip=False), Normalize.from_stats(*stats)], **loader_options)

    if args.timm_weights:  # fastai's timm path: its own body (TimmBody) and head on the arch, then the weights
        learn = vision_learner(dls_at(args.sizes[0]), "tf_efficientnet_lite0", pretrained=False, metrics=accuracy,
                               normalize=False)
        state = torch.load(args.timm_weights, map_location="cpu", weights_only=True)
        body = learn.model[0].model
        missing, unexpected = body.load_state_dict(state, strict=False)
        assert not missing and set(unexpected) <= {"classifier.weight", "classifier.bias"}, (missing, unexpected)
        learn.freeze()
    else:
        learn = vision_learner(dls_at(args.sizes[0]), resnet18, pretrained=False, metrics=accuracy)
    tick = time.perf_counter()
    learn.fit_one_cycle(1, FROZEN_LR)  # the head (and, fastai's train_bn, the body's BatchNorm) on a frozen body
    phases["frozen"] = time.perf_counter() - tick
    learn.unfreeze()
    for index, size in enumerate(args.sizes):
        tick = time.perf_counter()
        if index:
            learn.dls = dls_at(size)  # progressive resizing: a new DataLoaders, same model
        learn.fit_one_cycle(args.epochs, UNFROZEN_LR)
        phases[f"unfrozen_{size}"] = time.perf_counter() - tick

    tick = time.perf_counter()
    ids = pd.read_csv(args.data_dir / "sample_submission.csv", dtype={"id": str})["id"].tolist()
    test_dl = learn.dls.test_dl([args.data_dir / "test" / f"{image_id}.jpg" for image_id in ids])
    (augmented, plain), _ = learn.tta(dl=test_dl, n=args.n_aug, beta=None)
    phases["tta"] = time.perf_counter() - tick
    np.savez(args.out, ids=np.array(ids), classes=np.array(list(learn.dls.vocab)), plain=plain.numpy(),
             augmented=augmented.numpy(), phase_names=np.array(list(phases)),
             phase_seconds=np.array(list(phases.values())))
    print("fastai phases (s):", {name: round(seconds, 1) for name, seconds in phases.items()})


if __name__ == "__main__":
    main()
