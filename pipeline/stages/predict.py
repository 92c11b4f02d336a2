"""Try a trained model on your own images (fastai 0.7's `learn.predict_array`, for files): the top classes of each.

    python -m pipeline.stages.predict --checkpoint outputs/demo/finetune/2_48/model.pt photo.jpg more_photos/ \
        [--top-k 5] [--tta 4] [--csv predictions.csv]

Each image goes the way the test images went in the pipeline: the resize rule (shorter side, JPEG re-encoding) into a
private cache, then the validation transform at the checkpoint's size; with `--tta N`, also N passes with the
training augmentations, averaged as the TTA stage averages them. How the run resized and augmented its images is
read from the checkpoint (the options below override it, and are needed only for checkpoints that predate it), and so
are the backbone's preprocessing (mean, std, interpolation) and whether its validation ran under bf16 autocast
(`--amp` overrides; `auto` chooses for the checkpoint's arch and size as the recipe's `amp: auto` does).
A folder is searched for image files (by suffix), recursively. A file that cannot be read as an image is reported
and skipped; the others are still predicted, and the exit status is 1. A checkpoint or argument that does not work is
one line on stderr (exit status 1, 2 for an argument); --debug (or LESSON2_DEBUG=1) shows the traceback instead.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from pipeline import cli
from pipeline.predict import passes
from pipeline.recipe import defaults as recipe_defaults
from pipeline.compute import runtime
from pipeline.data.dataset import IMAGE_SUFFIXES, natural_key
from pipeline.predict.inference import tta_log_probs
from pipeline.io import write_csv
from pipeline.models.classifier import WeightsError, load_checkpoint, restore_model
from pipeline.data.resizing import resize_one

# How the images of a checkpoint made before it recorded them were encoded and augmented: the recipe's defaults.
IMAGE_DEFAULTS = ("images.jpeg_quality", "images.jpeg_draft", "transforms")
# The options that stand for a recipe key, checked against the recipe's schema (--shorter-side 0 would fail on every
# image, --jpeg-quality 500 would be clamped without a word).
RECIPE_OPTIONS = ("device", "loader.batch_size", "images.shorter_side", "images.jpeg_quality", "transforms.max_zoom")


def image_files(arguments: list[str]) -> list[Path]:
    """Files as given, and every image file under each folder given, in natural order."""
    files = []
    for argument in map(Path, arguments):
        if argument.is_dir():
            found = (path for path in argument.rglob("*") if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES)
            files.extend(sorted(found, key=lambda path: natural_key(str(path))))
        else:
            files.append(argument)
    return files


def resize_into(cache: Path, files: list[Path], images: dict) -> tuple[list[str], dict[Path, str]]:
    """Each readable file resized into `cache` as the resize stage would; (cache paths, {unreadable file: error})."""
    cached, errors = [], {}
    for index, source in enumerate(tqdm(files, desc="resize", disable=None, leave=False)):
        suffix = source.suffix.lower() if source.suffix.lower() in Image.registered_extensions() else ".png"
        name = f"{index}{suffix}"
        try:
            resize_one(source, cache / name, images["shorter_side"], images["jpeg_quality"], images["jpeg_draft"])
        except Exception as error:  # any unreadable file: reported, the batch goes on
            errors[source] = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
            continue
        cached.append(name)
    return cached, errors


def image_settings(meta: dict, args) -> dict:
    """How the run that made the checkpoint resized and augmented its images, with the command line's overrides."""
    images = {**recipe_defaults.defaults(IMAGE_DEFAULTS), **meta.get("images", {})}
    overrides = {"shorter_side": args.shorter_side, "jpeg_quality": args.jpeg_quality,
                 "augmentation": args.augmentation, "max_zoom": args.max_zoom}
    images.update({key: value for key, value in overrides.items() if value is not None})
    if "shorter_side" not in images:
        cli.fail(f"{args.checkpoint} does not say how its images were resized (made before predict existed): "
                 "pass --shorter-side (the recipe's images.shorter_side)")
    return images


def print_top(path: Path, probs: np.ndarray, classes: list[str], k: int) -> None:
    best = np.argsort(-probs)[:k]
    print(f"{path}: " + ", ".join(f"{classes[i]} {probs[i]:.3f}" for i in best), flush=True)


def argument_parser():
    parser = cli.stage_parser(__doc__)
    defaults = recipe_defaults.defaults(("device", "loader.batch_size"))
    parser.add_argument("--checkpoint", required=True, help="a model.pt the pipeline wrote")
    parser.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--tta", type=int, default=0, metavar="N", help="augmented passes besides the plain one")
    parser.add_argument("--csv", help="write path plus one probability column per class here")
    parser.add_argument("--device", default=defaults["device"], help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--batch-size", type=int, default=defaults["batch_size"])
    parser.add_argument("--amp", choices=["auto", "on", "off"],
                        help="bf16 autocast (default: as the checkpoint's validation ran; see the recipe's amp)")
    parser.add_argument("--shorter-side", type=int, help="override the checkpoint's resize rule")
    parser.add_argument("--jpeg-quality", type=int, help="override the checkpoint's resize cache JPEG quality")
    parser.add_argument("--augmentation", choices=["side_on", "top_down", "basic", "none"], help="override, for --tta")
    parser.add_argument("--max-zoom", type=float, help="override, for --tta")
    cli.add_debug_flag(parser)
    return parser


def argument_problem(args) -> str | None:
    """What is wrong with the arguments, before the checkpoint is loaded; None when they can work."""
    if args.top_k < 1 or args.tta < 0 or args.batch_size < 1:
        return "--top-k and --batch-size must be >= 1, --tta >= 0 (augmented passes besides the plain one)"
    given = {key: value for key in recipe_defaults.declared_keys(RECIPE_OPTIONS)
             if (value := getattr(args, key)) is not None}
    try:
        recipe_defaults.complete(given, RECIPE_OPTIONS)
    except recipe_defaults.InvalidParams as error:  # "shorter_side: 0 is less than the minimum of 8"
        key, _, problem = str(error).partition(": ")
        return f"--{key.replace('_', '-')}: {problem}"
    if args.csv and Path(args.csv).is_dir():
        return f"--csv {args.csv} is a folder; name the CSV file to write"
    return None


def load_model(checkpoint: str):
    """The model a pipeline checkpoint holds, and its meta; a WeightsError naming the file when it is not one."""
    if Path(checkpoint).is_dir():
        raise WeightsError(f"checkpoint {checkpoint} is a folder; pass the model.pt in it")
    _, meta = load_checkpoint(checkpoint, {})
    if not isinstance(meta.get("arch"), str) or not meta.get("classes"):
        raise WeightsError(f"checkpoint {checkpoint} does not name its arch and classes: not a model.pt the pipeline "
                           "wrote")
    return restore_model(checkpoint, meta["arch"], meta["classes"])


def run_settings(meta: dict, args) -> dict:
    """Seed, device and amp for runtime.start, with the checkpoint's arch and size and --batch-size, for which
    `--amp auto` chooses as a stage would. Without --amp, the precision the checkpoint's validation ran in."""
    checkpoint_amp = "on" if meta.get("amp") else "off" if "amp" in meta else "auto"
    if args.amp is None and "amp" in meta:
        print(f"amp {checkpoint_amp}: the precision the checkpoint's validation ran in (--amp overrides)", flush=True)
    return {**recipe_defaults.defaults(runtime.RECIPE_KEYS), "device": args.device, "amp": args.amp or checkpoint_amp,
            "arch": meta["arch"], "size": meta["size"], "batch_size": args.batch_size}


def start_device(settings: dict, threads: int):
    """(device, precision), or one line naming --device when torch cannot use it (no such GPU, no driver)."""
    try:
        return runtime.start(settings, threads)
    except RuntimeError as error:
        cli.fail(f"--device {settings['device']}: {' '.join(str(error).split())}")


def predict_files(model, meta: dict, files: list[Path], images: dict, params: dict, device, amp: bool):
    """Class probabilities of each readable file (resized as the pipeline's own images were, in a temporary cache);
    (readable files, probabilities, {unreadable file: error})."""
    with tempfile.TemporaryDirectory(prefix="lesson2-predict-") as cache:
        cached, errors = resize_into(Path(cache), files, images)
        probs = np.empty((0, len(meta["classes"])))
        if cached:
            log_probs = tta_log_probs(model=model, frame=pd.DataFrame({"path": cached}), cache_dir=cache, params=params,
                                      device=device, amp=amp, name="images")
            probs = passes.tta_mean(passes.from_log_probs(log_probs), params["n_aug"])
    return [path for path in files if path not in errors], probs, errors


def main(argv: list[str] | None = None) -> None:
    parser = argument_parser()
    args = parser.parse_args(argv)
    if problem := argument_problem(args):
        parser.error(problem)
    with cli.one_line_errors(args.debug, expected=(WeightsError,)):
        predict(args)


def predict(args) -> None:
    """Load, predict, print (and write --csv): main once the arguments are checked."""
    model, meta = load_model(args.checkpoint)
    images = image_settings(meta, args)
    settings = run_settings(meta, args)
    device, precision = start_device(settings, args.threads)
    model = runtime.on_device(model, device).eval()
    classes = meta["classes"]
    files = image_files(args.images)
    if not files:
        cli.fail(f"no image files in {' '.join(args.images)}")

    # --tta N: the recipe's default TTA mode (the checkpoint does not say which mode its run's TTA took)
    params = {**settings, **recipe_defaults.defaults(("tta.mode",)), "n_aug": args.tta, "num_workers": 0,
              "preprocessing": images.get("preprocessing"), "max_zoom": images["max_zoom"],
              "augmentation": images["augmentation"]}
    readable, probs, errors = predict_files(model=model, meta=meta, files=files, images=images, params=params,
                                            device=device, amp=precision.infer)

    for path, row in zip(readable, probs):
        print_top(path, row, classes, args.top_k)
    if args.csv:
        write_csv(pd.DataFrame(probs, columns=classes).assign(path=list(map(str, readable)))[["path", *classes]],
                  args.csv)
        print(f"{len(readable)} rows -> {args.csv}", flush=True)
    for path, error in errors.items():
        print(f"error: {path}: cannot read as an image: {error}", file=sys.stderr, flush=True)
    if errors and len(files) > 1:
        cli.fail(f"{len(errors)} of {len(files)} files could not be read; the other {len(readable)} were predicted")
    if errors:
        raise SystemExit(1)  # the one file's line above says it all


if __name__ == "__main__":
    main()
