# Small helpers the rules share: paths, the stage command, input functions.
import hashlib
import shlex
from pathlib import Path

from pipeline.workflow.deps import UnknownModule, module_files
from pipeline.workflow.flags import ShellText, flags
from pipeline.workflow.slices import stage_slice

# Every stage runs with the interpreter running Snakemake and this workflow's pipeline/ first on the path: no reliance
# on PATH or an activated environment. ShellText keeps both out of the params Snakemake compares between runs: a moved
# venv or checkout must not rerun anything.
STAGE_RUNNER = ShellText(
    f"PYTHONPATH={shlex.quote(workflow.basedir)}${{PYTHONPATH:+:$PYTHONPATH}} {shlex.quote(sys.executable)}"
)
# The training stages (train_head, finetune) run data-parallel under torchrun with `devices` > 1.
TRAINING_RUNNER = (
    STAGE_RUNNER
    if DEVICES == 1
    else ShellText(f"{STAGE_RUNNER} -m torch.distributed.run --standalone --nproc-per-node {DEVICES}")
)


def out(path):
    return f"{OUT}/{path}"


def code(stage):
    """The stage's module and every pipeline module it imports: an edit to any of them reruns the stage."""
    try:
        return module_files(f"pipeline.stages.{stage}")
    except UnknownModule as problem:
        raise WorkflowError(f"the code of stage {stage}: {problem}")


def stage_shell(stage, arguments, before=None):
    """A rule's shell line: `python -m pipeline.stages.<stage> <arguments>` (the rule's params.run says which python
    and how: STAGE_RUNNER or TRAINING_RUNNER), its output also in the rule's log."""
    command = f"{{params.run}} -m pipeline.stages.{stage} {arguments} 2>&1 | tee {{log:q}}"
    return f"{before} && {command}" if before else command


def data_dir(wildcards):
    """The competition's folder, for the stages that read it (their inputs name its files)."""
    return DATA


def data_inputs():
    """The competition files a stage reads, per layout; for a demo recipe, the demo rule's completion mark."""
    if DEMO:
        return {"demo": DEMO_BUILT}
    if LAYOUT == "csv":
        return {"labels": f"{DATA}/labels.csv", "train": f"{DATA}/train", "test": f"{DATA}/test"}
    return {"train": f"{DATA}/train", "valid": f"{DATA}/valid", "test": f"{DATA}/test"}


def sample_submission():
    """sample_submission.csv as an input when the data set has one (the demo's arrives with its data, upstream)."""
    return [SAMPLE_SUBMISSION] if not DEMO and Path(SAMPLE_SUBMISSION).exists() else []


def sample_submission_flag():
    return flags(sample=SAMPLE_SUBMISSION if DEMO or sample_submission() else None)


def model_out(path):
    return f"{MODEL_DIR}/{path}"


# The split a model trains and is scored on: its fold's, or the single split's (every member's alike).
MODEL_SPLIT = model_out("split.csv") if KFOLD else out("split.csv")


def member_out(path):
    return f"{MEMBER_DIR}/{path}"


def model_chain(wildcards):
    """The chain a job of a per-model rule belongs to (its {member}; the one chain without members)."""
    return CHAINS[getattr(wildcards, "member", None)]


def concrete(path, wildcards, **more):
    """A path pattern with the job's wildcards (and `more`) filled in."""
    return path.format(**{**dict(wildcards.items()), **more})


def for_every_fold(path, wildcards=None):
    """A per-model path for each fold of a K-fold run (of the job's member), or the single split's one."""
    if not KFOLD:
        return [path]
    return [concrete(path, wildcards, fold=fold) for fold in FOLDS] if wildcards else expand(path, fold=FOLDS)


def model_files(relative, chain=None):
    """A model's file (`relative` to its folder) for every fold of every member, or of the member `chain`: where a
    member shares a stage's work, the sharing member's file. Without members, for_every_fold's."""
    names = [chain] if chain else MODEL_CHAINS or [None]
    return [CHAINS[name].path(relative).format(fold=fold) for name in names for fold in FOLDS or [None]]


def resize_cache(wildcards):
    """The resize cache a model's jobs read (its member's shorter side)."""
    return model_chain(wildcards).resized


def previous_checkpoint(wildcards):
    """The weights a fine-tune size (or its lr_find) starts from."""
    return concrete(model_chain(wildcards).previous_checkpoint(wildcards.name), wildcards)


def final_checkpoint(wildcards):
    return concrete(model_chain(wildcards).final_checkpoint(), wildcards)


def every_fold(relative):
    """An input function: a file of every fold of the job's member, in the folder holding its TTA (oof's inputs)."""
    return lambda wildcards: for_every_fold(f"{model_chain(wildcards).stage_dir('tta')}/{relative}", wildcards)


def folder_of(output_name):
    """A params function: the folder of one of the job's outputs."""
    return lambda wildcards, output: Path(output[output_name]).parent


def precompute_params(wildcards):
    return model_chain(wildcards).precompute_slice()


def train_head_params(wildcards):
    return model_chain(wildcards).head_slice()


def tta_params(wildcards):
    return model_chain(wildcards).tta_slice()


def oof_params(wildcards):
    return model_chain(wildcards).slice("oof", folds=FOLDS)


def split_params():
    """The split stage's slice: a K-fold run assigns every fold at once, so the folds it runs (and the single-split
    `fold`) stay out of it and adding a fold leaves the split, and every other fold, alone."""
    if not KFOLD:
        return stage_slice("split", config)
    kfold = {key: config["split"][key] for key in ("method", "n_folds", "seed")}
    return stage_slice("split", config, sections={"split": kfold}, assign_folds=True)


def snapshot_flag(wildcards):
    """The finetune stage's --snapshots paths, or nothing when the size keeps none."""
    files = [concrete(path, wildcards) for path in model_chain(wildcards).snapshot_files(wildcards.name)]
    return flags(snapshots=files)


def tta_snapshots(wildcards):
    """The last size's snapshots folder, an input of TTA ([] without fine-tuning)."""
    names = model_chain(wildcards).finetune_names()
    return [concrete(model_chain(wildcards).snapshot_folder(names[-1]), wildcards)] if names else []


def tta_checkpoints(wildcards):
    return [concrete(path, wildcards) for path in model_chain(wildcards).tta_checkpoints()]


def finetune_params(wildcards):
    return model_chain(wildcards).finetune_slice(wildcards.name)


def lr_find_params(wildcards):
    return model_chain(wildcards).lr_find_slice(wildcards.name)


def caption(name):
    """A report caption (rules/report/<name>.rst)."""
    return f"report/{name}.rst"


def training_report(path, name, stage):
    """A training figure in the report: category Training, one subcategory per stage (and fold)."""
    subcategory = f"{MODEL_LABEL}, {stage}" if MODEL_LABEL else stage
    return report(path, caption=caption(name), category="2. Training", subcategory=subcategory)


def final_outputs():
    """What a plain `snakemake` builds: the submission, the scores, and every figure and table the report shows.
    Called by `rule all` once every rule file is included (it names rules' outputs)."""
    lr_find_plots = [
        plot
        for name, c in CHAINS.items()
        for step in c.lr_find_names()
        for plot in model_files(f"finetune/{step}/lr_find.png", name)
    ]
    member_results = [member_out(name) for name in ("oof.csv", "oof/cv_metrics.json")] if BLENDS else []
    blend_results = [out(f"{blend}/{name}") for blend in BLENDS for name in ("weights.json", "correlation.png")]
    return [
        out("submission.csv"),
        recipe_metrics(),
        out("stats/summary.json"),
        out("plots/augmentations.png"),
        *model_files("tta/confusion_matrix.png"),
        *([out("oof.csv"), out("cv_metrics.json")] if KFOLD and not MEMBER_NAMES else []),
        *([out("cv_metrics.json")] if BLENDS else []),
        *for_every_model_level(member_results),
        *blend_results,
        *rules.interpret.output,
        *rules.report_tables.output,
        *lr_find_plots,
    ]


def for_every_model_level(paths):
    return [path for pattern in paths for path in expand(pattern, member=MODEL_CHAINS)]


# The results' inputs
def blend_members(wildcards):
    """The members a blend blends: every member; in the pseudo-label round's, the students too."""
    return MEMBER_NAMES + ([STUDENT] if wildcards.blend == "blend_pseudo" else [])


def blend_inputs(name):
    return lambda wildcards: [member_out(name).format(member=member) for member in blend_members(wildcards)]


def calibration_inputs():
    """Out-of-sample predictions to calibrate on, and the test predictions to apply it to: a K-fold run's
    out-of-fold ones (the final blend's with members), or a single split's validation set (its first member's)."""
    if BLENDS:
        return {
            "rows": out(f"{FINAL_BLEND}/oof.csv"),
            "valid_passes": out(f"{FINAL_BLEND}/valid_passes.npy"),
            "test_passes": out(f"{FINAL_BLEND}/test_passes.npy"),
            "cv_metrics": out(f"{FINAL_BLEND}/cv_metrics.json"),
        }
    if KFOLD:
        return {
            "rows": out("oof.csv"),
            "valid_passes": rules.oof.output.valid_passes,
            "test_passes": rules.oof.output.test_passes,
            "cv_metrics": rules.oof.output.metrics,
        }
    return {
        "rows": out("split.csv"),
        "valid_passes": primary_file("tta/valid_passes.npy"),
        "test_passes": primary_file("tta/test_passes.npy"),
    }


def recipe_metrics():
    """The recipe's headline metrics: a K-fold run's out-of-fold ones (calibrate's), else its model's TTA metrics
    (with members on a single split, the first member's)."""
    return out("metrics.json") if KFOLD else primary_file("metrics.json")


def primary_file(relative):
    """A file of the recipe's own model on a single split: without members, out_dir's; with, the first member's."""
    return PRIMARY.path(relative).format(member=PRIMARY_NAME)


def interpretation(name):
    """An interpret output, in the report's Results under "interpretation"."""
    return report(
        out(f"interpret/{name}"),
        caption=caption(Path(name).stem),
        category="3. Results",
        subcategory="interpretation (out of fold)" if KFOLD else "interpretation",
    )


# The tracking rule's inputs
def tracked_run():
    """What `all` asks of tracking: the rule's mark and pages, or nothing with tracking off."""
    return rules.track.output if TRACKING_URI else []


def training_files():
    """Every model's per-epoch log (log.csv, the curves the run logs) and plots, of the head and of each fine-tune
    size."""
    stages = {
        name: ["head"] + [f"finetune/{step}" for step in chain.finetune_names()] for name, chain in CHAINS.items()
    }
    return [
        path
        for name, folders in stages.items()
        for folder in folders
        for file in ("log.csv", "curves.png", "lr_schedule.png", "batch_loss.png")
        for path in model_files(f"{folder}/{file}", name)
    ]


def result_plots():
    """The report's figures that `all` reaches only through other files: the data's, calibration's, the
    out-of-fold ones of each member (or of the K-fold run) and each blend's folds."""
    plots = [rules.image_stats.output.plot_all, rules.image_stats.output.plot_small, rules.calibrate.output.plot]
    oof_plots = [member_out("plots/cv_folds.png"), member_out("plots/oof_confusion_matrix.png")] if KFOLD else []
    plots += for_every_model_level(oof_plots) if BLENDS else oof_plots
    return plots + [out(f"{blend}/cv_folds.png") for blend in BLENDS]


def tracked_models():
    """Each model's member, fold and folder, for the tracking rule's nested runs."""
    return [
        {"member": member, "fold": fold, "dir": MODEL_DIR.format(member=member, fold=fold)}
        for member in MODEL_CHAINS or [None]
        for fold in FOLDS or [None]
    ]


def final_checkpoints():
    return [path for name, chain in CHAINS.items() for path in model_files(chain.final_checkpoint_file(), name)]


# A sweep's inputs (rules/sweep.smk)
def early_stage(chain):
    """The first fine-tune size's folder (the head's without fine-tuning): where a trial may be pruned."""
    names = chain.finetune_names()
    return f"finetune/{names[0]}" if names else "head"


def member_score_inputs(wildcards):
    """A member's out-of-fold rows and passes (K-fold), or the single split's validation rows and its TTA passes."""
    if KFOLD:
        return {"rows": member_out("oof.csv"), "valid_passes": member_out("oof/valid_passes.npy")}
    chain = CHAINS[wildcards.member]
    return {"rows": out("split.csv"), "valid_passes": chain.path("tta/valid_passes.npy")}
