"""The offline bundle (`snakemake package`): every model the submission uses as ONNX, how the run combined them as
`manifest.json`, and the one-file `predict.py` (pipeline/offline*.py) that writes the same submission with ONNX
Runtime, NumPy and Pillow alone, for Kaggle code competitions. Before the bundle is kept, it predicts the run's own
test images and must give the run's submission.csv (`package.check`). With `package.quantize: int8`, also int8
models, their out-of-sample log loss and speed measured against the fp32 models'.

    python -m pipeline.stages.package --plan '{"members": [...], ...}' --out-dir out/package \
        --cache-dir out/onnx_cache --params '{"quantize": "none", "wheels": false, "check": true}'
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.compete import bundle
from pipeline import cli
from pipeline.compete import cv_scores
from pipeline.models import export
from pipeline.offline import images as offline
from pipeline.offline import predictor as offline_predict
from pipeline.data.dataset import read_split
from pipeline.io import read_json, write_json
from pipeline.models.classifier import WeightsError

# The bundle's float32 ONNX models against the TTA stage's float32 torch passes (deterministic TTA never autocasts).
TOLERANCE = 1e-4
CALIBRATION_IMAGES = 32  # training images per fold for int8's activation ranges


def export_models(plan: dict, staging: Path, cache_dir: Path) -> tuple[dict, list[dict]]:
    """Each member's folds' checkpoints as ONNX in staging/models; (the manifest's models, its members)."""
    models, members = {}, []
    for member in plan["members"]:
        folds, source = [], None
        for fold in member["folds"]:
            names = []
            for checkpoint in map(Path, fold["checkpoints"]):
                started = time.perf_counter()
                exported, source = export.export_checkpoint(checkpoint, cache_dir)
                name = bundle.model_name(member["name"], fold["fold"], checkpoint)
                digest = export.copy_model(exported, staging / name)
                models[name] = {"file": name, "sha256": digest, "bytes": (staging / name).stat().st_size,
                                "exported_from": source}
                names.append(name)
                how = "found in the export cache" if source["cached"] else "exported"
                print(f"{name}: {how} from {checkpoint} in {time.perf_counter() - started:.1f}s", flush=True)
            folds.append({"fold": fold["fold"], "prior": bundle.fold_prior(fold["split"]), "models": names})
        members.append({"name": member["name"], "n_aug": member["n_aug"], "fold_average": plan["fold_average"],
                        "input": bundle.member_input(member, source["size"], source["preprocessing"]["interpolation"]),
                        "folds": folds})
    return models, members


def held_out_rows(plan: dict) -> list[tuple[list[Path], np.ndarray]]:
    """Per fold, its validation images (data_dir paths) and labels: what that fold's models never saw."""
    data_dir = Path(plan["data_dir"])
    rows = []
    for fold in plan["members"][0]["folds"]:
        _, valid, _ = read_split(fold["split"])
        rows.append(([data_dir / path for path in valid["path"]], valid["y"].to_numpy()))
    return rows


def calibration_batches(member: dict, split_csv: str, data_dir: Path, pool) -> list[np.ndarray]:
    """uint8 batches of a fold's first training images, every TTA view, for int8's activation ranges."""
    train, _, _ = read_split(split_csv)
    files = [data_dir / path for path in train["path"][:CALIBRATION_IMAGES]]
    prepared = pool.starmap(offline_predict.prepare, [(path, [member["input"]], None) for path in files])
    views = np.concatenate([arrays[0] for error, arrays in prepared if error is None])
    return [views[start:start + 16] for start in range(0, len(views), 16)]


def quantize(manifest: dict, plan: dict, staging: Path, pool) -> None:
    """An int8 twin of every model, calibrated on its own fold's training images."""
    data_dir = Path(plan["data_dir"])
    for member, planned in zip(manifest["members"], plan["members"]):
        for fold, planned_fold in zip(member["folds"], planned["folds"]):
            batches = calibration_batches(member, planned_fold["split"], data_dir, pool)
            for name in fold["models"]:
                int8_name = name.replace(".onnx", ".int8.onnx")
                export.quantize_int8(staging / name, staging / int8_name, batches)
                manifest["models"][name]["int8"] = {"file": int8_name,
                                                    "sha256": offline_predict.sha256_of(staging / int8_name),
                                                    "bytes": (staging / int8_name).stat().st_size}
                print(f"{int8_name}: quantised", flush=True)


def held_out_scores(manifest: dict, plan: dict, staging: Path, kind: str, threads: int, batch_size: int,
                    pool) -> dict:
    """Log loss, accuracy and images/s of the bundle's `kind` models on held-out rows: each fold's validation images
    through that fold's models, combined as the bundle combines them."""
    files = {name: staging / (model["int8"]["file"] if kind == "int8" else model["file"])
             for name, model in manifest["models"].items()}
    predictor = offline_predict.Predictor(manifest, offline_predict.sessions(files, threads, "cpu"))
    probs, labels, started = [], [], time.perf_counter()
    for position, (images, y) in enumerate(held_out_rows(plan)):
        probs.append(offline_predict.predict_folder(predictor=predictor.fold(position), files=images,
                                                    batch_size=batch_size, pool=pool))
        labels.append(y)
    seconds = time.perf_counter() - started
    logloss, accuracy = cv_scores.scores(np.concatenate(labels), np.concatenate(probs))
    return {"logloss": logloss, "accuracy": accuracy, "images_per_s": sum(map(len, labels)) / seconds}


def int8_report(manifest: dict, plan: dict, staging: Path, threads: int, batch_size: int, pool) -> dict:
    fp32, int8 = (held_out_scores(manifest=manifest, plan=plan, staging=staging, kind=kind, threads=threads,
                                  batch_size=batch_size, pool=pool)
                  for kind in ("fp32", "int8"))
    n_folds = len(plan["members"][0]["folds"])
    report = {"scope": "out-of-fold" if n_folds > 1 else "validation", "threads": threads,
              **{f"{kind}_{key}": value for kind, scores in (("fp32", fp32), ("int8", int8))
                 for key, value in scores.items()},
              "note": "each fold's held-out images through that fold's models, with the run's blend weights and "
                      "calibration (fitted on these rows): compare the two figures with each other"}
    print(f"int8 against fp32, {report['scope']}: log loss {int8['logloss']:.4f} against {fp32['logloss']:.4f}, "
          f"accuracy {int8['accuracy']:.4f} against {fp32['accuracy']:.4f}, {int8['images_per_s']:.1f} against "
          f"{fp32['images_per_s']:.1f} images/s ({threads} threads)", flush=True)
    return report


def check_against_run(staging: Path, plan: dict, threads: int, batch_size: int, pool) -> dict:
    """The bundle, as predict.py runs it, on the run's own test images, compared with the run's submission.csv."""
    loaded = offline_predict.Bundle(staging)
    predictor = offline_predict.Predictor(loaded.manifest, offline_predict.sessions(loaded.files, threads))
    files = offline.image_files(Path(plan["data_dir"]) / "test")
    started = time.perf_counter()
    probs = offline_predict.predict_folder(predictor=predictor, files=files, batch_size=batch_size, pool=pool,
                                           on_unreadable=lambda line: print(line))
    seconds = time.perf_counter() - started
    written = staging.parent / f".{staging.name}.check.csv"
    header, rows = offline_predict.submission_rows([path.stem for path in files], probs, loaded.manifest,
                                           Path(plan["sample"]) if plan["sample"] else None)
    offline_predict.write_submission(written, header, rows)
    try:
        found = bundle.compare_submissions(written, Path(plan["submission"]))
    finally:
        written.unlink(missing_ok=True)
    found.update({"tolerance": TOLERANCE, "images_per_s": len(files) / seconds, "provider": predictor.provider})
    print(f"checked against {plan['submission']}: {found['rows']} rows, largest probability difference "
          f"{found['max_difference']:.2g} (tolerance {TOLERANCE:g}), top class differs in "
          f"{found['top_class_differs']}; {found['images_per_s']:.1f} images/s", flush=True)
    problem = bundle.parity_problem(found)
    if problem:
        cli.fail(f"the bundle does not reproduce {plan['submission']}: {problem}")
    return found


def describe_run(plan: dict, models: dict, members: list[dict]) -> dict:
    """The manifest (pipeline/compete/bundle.py lists its fields): how the run made its submission, as data."""
    weights = read_json(plan["blend"]) if plan["blend"] else None
    classes = read_split(plan["members"][0]["folds"][0]["split"])[2]
    return {"bundle_version": offline_predict.BUNDLE_VERSION, "classes": classes,
            "submission": bundle.submission_format(plan, classes),
            # images.max_pixels null: Pillow's own limit, as the image-stats stage applies it
            "test_images": {"suffixes": list(offline.IMAGE_SUFFIXES),
                            "max_pixels": plan["max_pixels"] or offline.Image.MAX_IMAGE_PIXELS},
            "members": members, "blend": bundle.blend_entry(weights),
            "calibration": bundle.calibration_entry(read_json(plan["calibration"])), "models": models,
            "made_from": {"out_dir": plan["out_dir"], "submission": plan["submission"],
                          "made_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}}


def fetch_wheels(staging: Path, params: dict) -> dict | None:
    """With package.wheels, the requirements' wheels in staging/wheels; the platform and Python they are for."""
    if not params["wheels"]:
        return None
    wheels = {"platform": params["platform"], "python": params["python"]}
    try:
        fetched = bundle.download_wheels(staging / "requirements.txt", staging / "wheels", **wheels)
    except RuntimeError as error:
        cli.fail(str(error))
    print(f"wheels for {wheels['platform']}, Python {wheels['python']}: {', '.join(fetched)}", flush=True)
    return wheels


RECIPE_KEYS = ("package",)


def main(argv: list[str] | None = None) -> None:
    parser = cli.stage_parser(__doc__, RECIPE_KEYS)
    parser.add_argument("--plan", required=True, type=json.loads, help="the run's models and results (the rule's)")
    parser.add_argument("--out-dir", required=True, help="the bundle's folder, written whole or not at all")
    parser.add_argument("--cache-dir", required=True, help="exported models, kept by their checkpoint's content")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)
    params, plan = args.params, args.plan
    started = cli.announce("package", params)
    torch.set_num_threads(args.threads)
    out_dir = Path(args.out_dir)
    staging = out_dir.with_name(f".{out_dir.name}.staging")  # renamed onto out_dir once complete and checked
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "models").mkdir(parents=True)

    with offline_predict.worker_pool(max(1, args.threads - 1)) as pool:  # forked before any ONNX Runtime session
        try:
            models, members = export_models(plan, staging, Path(args.cache_dir))
        except (export.ExportError, WeightsError) as error:
            cli.fail(str(error))
        manifest = describe_run(plan, models, members)
        if params["quantize"] == "int8":
            quantize(manifest, plan, staging, pool)
            manifest["int8"] = int8_report(manifest=manifest, plan=plan, staging=staging, threads=args.threads,
                                           batch_size=args.batch_size, pool=pool)
        (staging / "predict.py").write_text(bundle.predict_script())
        (staging / "requirements.txt").write_text(bundle.requirements())
        write_json(manifest, staging / "manifest.json")
        wheels = fetch_wheels(staging, params)
        if params["check"]:
            manifest["checked_against_run"] = check_against_run(staging, plan, args.threads, args.batch_size, pool)
            write_json(manifest, staging / "manifest.json")
    (staging / "README.md").write_text(bundle.readme(manifest, Path(plan["out_dir"]).name, plan["out_dir"], wheels))
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(staging, out_dir)
    size = sum(path.stat().st_size for path in out_dir.rglob("*") if path.is_file())
    print(f"{out_dir}: {len(models)} models, {size / 1e6:.1f} MB", flush=True)
    cli.finish("package", started)


if __name__ == "__main__":
    main()
