# What `snakemake package` bundles, and why a bundle could not reproduce this run (checked before any job).
from pipeline.workflow.backbone_check import checked_export


class ModelWildcards(dict):
    """The {member} and {fold} of one model's jobs, as the rules' input functions read their wildcards."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def model_wildcards(member, fold):
    return ModelWildcards({key: value for key, value in (("member", member), ("fold", fold)) if value is not None})


def packaged_member(name):
    """One member of the final blend (the run's one chain without members): its TTA, resize rule and each fold's
    split and checkpoints (the last size's snapshots, then its final weights)."""
    chain = CHAINS[name]
    folds = [
        {"fold": fold, "split": concrete(MODEL_SPLIT, wildcards), "checkpoints": tta_checkpoints(wildcards)}
        for fold in (FOLDS or [None])
        for wildcards in [model_wildcards(name, fold)]
    ]
    return {
        "name": name,
        "n_aug": chain.tta["n_aug"],
        "mode": chain.tta["mode"],
        "augmentation": chain.recipe["transforms"]["augmentation"],
        "max_zoom": chain.recipe["transforms"]["max_zoom"],
        "images": chain.resize_rule,
        "folds": folds,
    }


def package_plan():
    """What the package stage reads: every model the submission uses and how the run combined them."""
    return {
        # on a single split, the first member alone makes the submission (members are not blended there)
        "members": [packaged_member(name) for name in (MODEL_CHAINS if BLENDS else [PRIMARY_NAME])],
        "fold_average": config["ensemble"]["average"],
        "blend": out(f"{FINAL_BLEND}/weights.json") if FINAL_BLEND else None,
        "calibration": rules.calibrate.output.report,
        "submission": out("submission.csv"),
        "data_dir": DATA,
        "out_dir": OUT,
        "sample": SAMPLE_SUBMISSION if DEMO or sample_submission() else None,
        "layout": LAYOUT,
        "positive_class": config["data"]["positive_class"],
        "clip": config["submission"]["clip"],
        "max_pixels": config["images"]["max_pixels"],
    }


def package_problems(plan):
    """Why a bundle could not reproduce this run: TTA passes drawn at random, a backbone that does not export."""
    problems = []
    for member in plan["members"]:
        where = f"members.{member['name']}: " if member["name"] else ""
        if member["mode"] == "random" and member["n_aug"]:
            problems.append(
                f"{where}tta.mode random: its {member['n_aug']} augmented passes are drawn from torch's "
                "random generator, which a bundle without torch cannot repeat; set tta.mode: "
                "deterministic (reruns TTA, calibration and the submission, no training)"
            )
    for arch in sorted({CHAINS[member["name"]].model["arch"] for member in plan["members"]}):
        if problem := checked_export(arch):
            problems.append(f"model.arch {arch} does not export to ONNX: {problem}")
    return problems


def package_inputs(wildcards):
    """The run's models and results; asked only when `package` is planned, which is when a bundle that cannot
    reproduce the run stops the workflow, before any job runs."""
    plan = package_plan()
    stop_on(package_problems(plan), "snakemake package cannot make a bundle of this run")
    models = [fold["split"] for member in plan["members"] for fold in member["folds"]]
    checkpoints = [path for member in plan["members"] for fold in member["folds"] for path in fold["checkpoints"]]
    return {
        "models": models + checkpoints,
        "calibration": plan["calibration"],
        "submission": plan["submission"],
        "blend": plan["blend"] or [],
        "sample": sample_submission(),
    }
