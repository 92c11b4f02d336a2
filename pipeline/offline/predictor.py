"""The bundle's own part of predict.py (pipeline/offline/images.py and combine.py stand above it there): the
manifest and its checks, ONNX Runtime sessions, reading images in worker processes while the models run, and the
command line.

    python -m pipeline.offline.predictor TEST_DIR --bundle outputs/demo/package [--out submission.csv] ...

A bundle, folder or argument that does not work is one line on stderr (exit status 1, 2 for an argument), never a
traceback; --debug (or LESSON2_DEBUG=1) shows the traceback instead. (pipeline/cli.py does the same for the
pipeline's own commands; predict.py is one file without the pipeline, so it has its own few lines.)
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import sys
import time
from collections import deque
from pathlib import Path

import numpy as np

from pipeline.offline.images import IMAGE_SUFFIXES, as_cached, image_files, inspect_image, natural_key, view
from pipeline.offline.combine import (PLAIN, average, calibrated, combine, from_log_probs, stacked, submission_values,
                                      tta_mean)

BUNDLE_VERSION = 1
# What every manifest holds (pipeline/compete/bundle.py writes it): a manifest without one of them is not a bundle's.
MANIFEST_KEYS = ("bundle_version", "classes", "submission", "test_images", "members", "blend", "calibration", "models")
DEBUG = "LESSON2_DEBUG"  # set (to anything but 0) for the traceback of an error, as --debug


class BundleError(Exception):
    """A bundle, test folder or argument that cannot work: the message names the file or argument."""


def sha256_of(path: Path) -> str:
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def image_error(error: Exception) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def prepare(path: Path, inputs: list[dict], max_pixels: int) -> tuple[str | None, list[np.ndarray]]:
    """One test image as each input group's models see it: (None, [(passes, 3, size, size) uint8 per group]), or
    (why it cannot be read, []) for an image the pipeline would have left out (its image-stats checks)."""
    try:
        inspect_image(path, max_pixels)
        arrays = []
        for spec in inputs:
            image = as_cached(path, spec)
            arrays.append(np.stack([view(image, spec["size"], spec["interpolation"], one) for one in spec["views"]]))
        return None, arrays
    except Exception as error:  # any unreadable file: the class prior, as the pipeline gives it
        return image_error(error), []


class Bundle:
    """manifest.json and the models it names, checked: the version, every file and its checksum."""

    def __init__(self, folder: Path, models: str = "fp32"):
        self.folder = folder
        manifest_path = folder / "manifest.json"
        try:
            self.manifest = json.loads(manifest_path.read_text())
        except (OSError, ValueError) as error:
            raise BundleError(f"{manifest_path}: cannot read the bundle's manifest ({image_error(error)})") from None
        missing = [key for key in MANIFEST_KEYS if key not in self.manifest] \
            if isinstance(self.manifest, dict) else list(MANIFEST_KEYS)
        if missing:
            raise BundleError(f"{manifest_path}: not a bundle's manifest (no {', '.join(missing)}); use the "
                              "manifest.json that came with the bundle")
        version = self.manifest.get("bundle_version")
        if not isinstance(version, int) or version > BUNDLE_VERSION:
            raise BundleError(f"{manifest_path}: bundle version {version!r} is newer than this predict.py reads "
                              f"({BUNDLE_VERSION}); use the predict.py that came with the bundle")
        self.files = self._model_files(models)

    def _model_files(self, kind: str) -> dict[str, Path]:
        """{model name in the manifest: the file to run}, each checked against the checksum the manifest holds."""
        models = self.manifest["models"]
        if kind == "int8" and not all("int8" in model for model in models.values()):
            raise BundleError(f"{self.folder / 'manifest.json'}: this bundle has no int8 models (package.quantize)")
        files = {}
        for name, model in models.items():
            entry = model["int8"] if kind == "int8" else model
            path = self.folder / entry["file"]
            if not path.is_file():
                raise BundleError(f"{path}: model file missing from the bundle")
            if sha256_of(path) != entry["sha256"]:
                raise BundleError(f"{path}: checksum differs from manifest.json's: the file is damaged or not this "
                                  "bundle's")
            files[name] = path
        return files


def sessions(files: dict[str, Path], threads: int, provider: str = "auto") -> dict:
    """{model name: an ONNX Runtime session}: on CUDA where onnxruntime-gpu finds a GPU (unless provider is cpu)."""
    import onnxruntime

    available = onnxruntime.get_available_providers()
    if provider == "cuda" and "CUDAExecutionProvider" not in available:
        raise BundleError("--provider cuda: ONNX Runtime has no CUDA provider here (pip install onnxruntime-gpu)")
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] \
        if provider != "cpu" and "CUDAExecutionProvider" in available else ["CPUExecutionProvider"]
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.log_severity_level = 3
    return {name: session(path, options, providers) for name, path in files.items()}


def session(path: Path, options, providers: list[str]):
    import onnxruntime

    try:
        return onnxruntime.InferenceSession(str(path), options, providers=providers)
    except Exception as error:  # ONNX Runtime's errors (InvalidProtobuf, Fail, ...) share no class of their own
        raise BundleError(f"{path}: ONNX Runtime cannot load this model ({' '.join(str(error).split())})") from None


class Predictor:
    """The run's way of turning its models' passes into one prediction: snapshots and folds averaged, members
    blended, calibrated; `sessions` run the models by their manifest names."""

    def __init__(self, manifest: dict, sessions: dict):
        self.manifest, self.sessions = manifest, sessions
        self.inputs = [member["input"] for member in manifest["members"]]
        self.provider = next(iter(sessions.values())).get_providers()[0]

    def fold(self, position: int) -> Predictor:
        """The same run with each member reduced to its fold at `position`: what predicts that fold's held-out rows."""
        members = [{**member, "folds": [member["folds"][position]]} for member in self.manifest["members"]]
        return Predictor({**self.manifest, "members": members}, self.sessions)

    def model_passes(self, name: str, images: np.ndarray) -> np.ndarray:
        """(2, N, C) passes of one model over (P, N, 3, H, W) uint8 views."""
        n_passes, n_images = images.shape[:2]
        log_probs = self.sessions[name].run(None, {"images": images.reshape(-1, *images.shape[2:])})[0]
        return from_log_probs(log_probs.astype(np.float64).reshape(n_passes, n_images, -1))

    def member_passes(self, member: dict, images: np.ndarray, usable: np.ndarray) -> np.ndarray:
        """(2, N, C): each fold's snapshots averaged, unreadable images given the fold's class prior, then the folds
        averaged, as the TTA and oof stages did."""
        folds = []
        for fold in member["folds"]:
            passes = np.tile(np.asarray(fold["prior"], dtype=np.float64), (2, len(usable), 1))
            if usable.any():
                passes[:, usable] = average([self.model_passes(name, images[:, usable]) for name in fold["models"]])
            folds.append(passes)
        return average(folds, member["fold_average"]) if len(folds) > 1 else folds[0]

    def predict(self, arrays: list[np.ndarray], usable: np.ndarray) -> np.ndarray:
        """(N, C) calibrated probabilities of a batch; `arrays` per input group: (N, P, 3, H, W), zeros where not
        usable."""
        members = self.manifest["members"]
        member_passes = [self.member_passes(member, arrays[index].swapaxes(0, 1), usable)
                         for index, member in enumerate(members)]
        blend = self.manifest["blend"]
        if blend is None:
            passes = member_passes[0]
        else:
            member_probs = np.stack([tta_mean(passes, member["n_aug"])
                                     for passes, member in zip(member_passes, members)])
            blended = combine(member_probs, blend["weights"], blend["space"]) if blend["method"] == "weights" \
                else stacked(member_probs, blend["stacker"], len(self.manifest["classes"]))
            passes = np.stack([blended, blended])
        calibration = self.manifest["calibration"]
        probs = calibrated(passes, calibration["plain_weight"], calibration["temperature"])
        probs[~usable] = passes[PLAIN][~usable]  # a prior stays a prior: a temperature would sharpen it into a guess
        return probs


def batches_of(items: list, size: int) -> list[list]:
    return [items[start:start + size] for start in range(0, len(items), size)]


def worker_pool(workers: int):
    """Processes that read and preprocess images. Start it before any ONNX Runtime session: a process forked while
    a runtime's threads hold a lock could wait for it for ever."""
    import multiprocessing

    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    return context.Pool(workers)


def predict_folder(predictor: Predictor, files: list[Path], batch_size: int, pool, progress=None,
                   on_unreadable=print) -> np.ndarray:
    """(N, C) probabilities of `files`, read and preprocessed by `pool` (`worker_pool`) while the models run."""
    from functools import partial

    inputs, max_pixels = predictor.inputs, predictor.manifest["test_images"]["max_pixels"]
    task = partial(prepare, inputs=inputs, max_pixels=max_pixels)
    results, pending = [], deque()
    for batch in batches_of(files, batch_size) + [None]:
        if batch is not None:
            pending.append((batch, pool.map_async(task, batch)))  # the next batch decodes while this one runs
        if len(pending) > 1 or (batch is None and pending):
            done, prepared = pending.popleft()
            results.append(_predict_batch(predictor, done, prepared.get(), inputs, on_unreadable))
            if progress is not None:
                progress.update(len(done))
    return np.concatenate(results)


def _predict_batch(predictor: Predictor, files: list[Path], prepared: list, inputs: list[dict],
                   on_unreadable) -> np.ndarray:
    usable = np.array([error is None for error, _ in prepared])
    for path, (error, _) in zip(files, prepared):
        if error is not None:
            on_unreadable(f"{path}: cannot read as an image ({error}); it gets the training class prior")
    arrays = []
    for index, spec in enumerate(inputs):
        shape = (len(spec["views"]), 3, spec["size"], spec["size"])
        arrays.append(np.stack([found[index] if error is None else np.zeros(shape, np.uint8)
                                for error, found in prepared]))
    return predictor.predict(arrays, usable)


def read_sample_ids(sample: Path) -> list[str]:
    import csv

    try:
        with open(sample, newline="", encoding="utf-8-sig") as file:
            rows = list(csv.reader(file))
    except (OSError, ValueError, csv.Error) as error:  # not there, not text (UnicodeDecodeError), not CSV
        raise BundleError(f"{sample}: cannot read the sample submission ({image_error(error)})") from None
    if not rows or rows[0][:1] != ["id"]:
        raise BundleError(f"{sample}: its first column must be 'id'")
    return [row[0] for row in rows[1:] if row]


def submission_rows(ids: list[str], probs: np.ndarray, manifest: dict, sample: Path | None):
    """(header, rows) of the CSV: in the sample submission's order when one is given (every id once, the same ids
    as the test folder), else in the test ids' natural order."""
    columns, values = submission_values(probs, manifest["classes"], manifest["submission"])
    position = {image_id: index for index, image_id in enumerate(ids)}
    if sample is not None:
        order = read_sample_ids(sample)
        if len(set(order)) != len(order) or set(order) != set(ids):
            missing, extra = sorted(set(order) - set(ids)), sorted(set(ids) - set(order))
            raise BundleError(f"{sample}: its ids differ from the test folder's: {len(missing)} without an image "
                              f"(e.g. {missing[:3]}), {len(extra)} images not in it (e.g. {extra[:3]}), or ids twice")
    else:
        order = sorted(ids, key=natural_key)
    rows = [[image_id, *(f"{value:.10g}" for value in values[position[image_id]])] for image_id in order]
    return ["id", *columns], rows


def write_submission(path: Path, header: list[str], rows: list[list[str]]) -> None:
    """Written under a temporary name and renamed: a killed run never leaves half a submission."""
    import csv

    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "w", newline="") as file:
        writer = csv.writer(file, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    os.replace(temporary, path)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser whose errors are one line, not the usage first (--help still shows it)."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (--help lists the arguments)\n")


@contextlib.contextmanager
def one_line_errors(debug: bool):
    """Any error as one `error:` line and exit status 1: a BundleError or OSError (a file named) in its own words,
    anything else as an internal error; with --debug or LESSON2_DEBUG the traceback instead."""
    debug = debug or os.environ.get(DEBUG, "0").strip() not in ("", "0")
    try:
        yield
    except KeyboardInterrupt:
        if debug:
            raise
        print("interrupted", file=sys.stderr, flush=True)
        raise SystemExit(130) from None
    except Exception as error:
        if debug:
            raise
        said = " ".join(str(error).split())
        if not isinstance(error, (BundleError, OSError)):
            said = f"internal error: {type(error).__name__}: {said}; rerun with --debug for the traceback"
        print(f"error: {said}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None


def argument_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("test_dir", metavar="TEST_DIR", type=Path, help="the folder of test images")
    parser.add_argument("--out", type=Path, default=Path("submission.csv"))
    parser.add_argument("--sample", type=Path, help="sample_submission.csv: rows in its order, its ids checked")
    parser.add_argument("--threads", type=positive_int, default=os.cpu_count() or 1,
                        help="ONNX Runtime's threads (default: every core)")
    parser.add_argument("--batch-size", type=positive_int, default=32, help="images per batch (each with its views)")
    parser.add_argument("--workers", type=positive_int, default=max(1, (os.cpu_count() or 2) - 1),
                        help="processes that read and preprocess images while the models run")
    parser.add_argument("--models", choices=["fp32", "int8"], default="fp32",
                        help="int8: the quantised models, where the bundle has them (manifest.json: their log loss)")
    parser.add_argument("--provider", choices=["auto", "cpu", "cuda"], default="auto",
                        help="auto: ONNX Runtime's CUDA provider when onnxruntime-gpu and a GPU are there")
    parser.add_argument("--bundle", type=Path, default=Path(__file__).resolve().parent, help=argparse.SUPPRESS)
    parser.add_argument("--debug", action="store_true",
                        help=f"show an error's traceback instead of one line (as does {DEBUG}=1 in the environment)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = argument_parser().parse_args(argv)
    with one_line_errors(args.debug):
        predict(args)


def check_paths(args) -> None:
    """The test folder, --out and --sample, before a single image is read: a mistake there would otherwise cost the
    whole prediction."""
    if not args.test_dir.is_dir():
        raise BundleError(f"{args.test_dir}: {'not a folder' if args.test_dir.exists() else 'no such folder'} "
                          "(TEST_DIR is the folder of test images)")
    if args.out.is_dir():
        raise BundleError(f"--out {args.out} is a folder; name the submission file to write")
    if not args.out.parent.is_dir():
        raise BundleError(f"--out {args.out}: no folder {args.out.parent} to write it in")
    if args.sample is not None:
        read_sample_ids(args.sample)


def predict(args) -> None:
    """Check, predict, write the submission: main once the arguments are parsed."""
    started = time.perf_counter()
    check_paths(args)
    bundle = Bundle(args.bundle, args.models)
    files = image_files(args.test_dir)
    if not files:
        raise BundleError(f"{args.test_dir}: no test images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
    from tqdm import tqdm

    with worker_pool(args.workers) as pool:
        predictor = Predictor(bundle.manifest, sessions(bundle.files, args.threads, args.provider))
        print(f"{len(files)} images, {len(predictor.sessions)} {args.models} models on {predictor.provider}, "
              f"{args.threads} threads, {args.workers} workers", flush=True)
        with tqdm(total=len(files), unit="img", mininterval=2.0, file=sys.stdout) as progress:
            probs = predict_folder(predictor=predictor, files=files, batch_size=args.batch_size, pool=pool,
                                   progress=progress, on_unreadable=lambda line: progress.write(f"warning: {line}"))
    header, rows = submission_rows([path.stem for path in files], probs, bundle.manifest, args.sample)
    write_submission(args.out, header, rows)
    seconds = time.perf_counter() - started
    rate = len(files) / seconds
    print(f"{args.out}: {len(rows)} rows in {seconds:.1f} s, {rate:.1f} images/s; 10,000 images would take about "
          f"{10_000 / rate / 60:.1f} min here", flush=True)


if __name__ == "__main__":
    main()
