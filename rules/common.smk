# Helpers shared by the rule files: paths, each stage's slice of the recipe, and the code each stage runs.
import hashlib
import json
import shlex
import sys
from pathlib import Path

sys.path.insert(0, workflow.basedir)  # the Snakefile may be run from anywhere (--directory, tests)

import yaml
from snakemake.utils import validate

from pipeline import members, recipe_checks, slurm_check, tracking_store
from pipeline.backbone_check import BackboneProblem, checked_backbone, checked_export
from pipeline.data import data_fingerprint
from pipeline.demo_folder import BUILT_MARKER, ownership_problem
from pipeline.deps import UnknownModule, module_files
from pipeline.run_lock import OutDirInUse, hold


def stop_on(problems, heading="the recipe cannot run"):
    """Stop, listing every problem found (each names its key, file, row or rule)."""
    if problems:
        raise WorkflowError(f"{heading}:\n" + "\n".join(f"  - {problem}" for problem in problems))


# The recipe as written, against the schema: each failing key with the constraint it breaks. Then Snakemake's
# validate fills in the schema's defaults, the one home of every default.
SCHEMA = f"{workflow.basedir}/config/schema.yaml"
SAMPLE_SUBMISSION_NAMED = "sample_submission" in config.get("data", {})
stop_on(recipe_checks.schema_problems(config, yaml.safe_load(Path(SCHEMA).read_text())))
validate(config, SCHEMA)
FOLDS, FOLD_PROBLEMS = recipe_checks.kfold_folds(config)
stop_on(recipe_checks.runtime_problems(config) + recipe_checks.finetune_problems(config) + FOLD_PROBLEMS
        + recipe_checks.tta_problems(config)
        + recipe_checks.out_dir_problems(config) + recipe_checks.data_problems(config, SAMPLE_SUBMISSION_NAMED)
        + tracking_store.tracking_problems(config))

DATA = config["data_dir"]
OUT = config["out_dir"]
LAYOUT = config["data"]["layout"]
# A recipe with `demo:` builds its own data set into data_dir. Pointed at a folder of someone else's files, stop here,
# before any job is planned: no rule ever writes into a user's data (also with --forceall or -R demo_data).
DEMO = "demo" in config
if DEMO and (problem := ownership_problem(DATA)):
    raise WorkflowError(problem)
# The demo rule's only output: Snakemake deletes a job's outputs before rerunning it, so the data files themselves
# are never declared as outputs; the builder clears and rebuilds its own folder by itself.
DEMO_BUILT = f"{DATA}/{BUILT_MARKER}"
# The interpreter running Snakemake runs every stage, with this workflow's pipeline/ first on the path: no reliance
# on PATH or an activated environment. Kept out of params on purpose: a moved venv must not rerun anything.
PYTHON = shlex.quote(sys.executable)
STAGE_ENV = f"PYTHONPATH={shlex.quote(workflow.basedir)}${{PYTHONPATH:+:$PYTHONPATH}}"
DEVICES = config["devices"]
# The GPUs a torch job holds, for Snakemake's --resources gpu=N and Slurm's --gpus: none on CPU, one per process.
GPU_JOBS = 0 if config["device"] == "cpu" else 1
TRAINING_GPUS = GPU_JOBS * DEVICES
# The training stages (train_head, finetune) run data-parallel under torchrun with `devices` > 1.
TRAINING_LAUNCH = (
    PYTHON if DEVICES == 1 else f"{PYTHON} -m torch.distributed.run --standalone --nproc-per-node {DEVICES}"
)
# Parallel stages ask for many threads and Snakemake caps them at --cores (workflow.cores would make
# `snakemake --report` demand --cores too).
MAX_THREADS = 256


def out(path):
    return f"{OUT}/{path}"


def code(stage):
    """The stage's module and every pipeline module it imports: an edit to any of them reruns the stage."""
    try:
        return module_files(f"pipeline.stages.{stage}")
    except UnknownModule as problem:
        raise WorkflowError(f"the code of stage {stage}: {problem}")


def stage_shell(stage, arguments, launch="{PYTHON}", before=None):
    """A rule's shell line: `python -m pipeline.stages.<stage> <arguments>` with this workflow's pipeline/ first on
    the path, its output also in the rule's log. A template, placeholders ({PYTHON}, {input.x:q}, ...) and all: the
    code rerun trigger compares it, so it must not hold the interpreter's path (a moved venv would rerun everything)."""
    command = f"{{STAGE_ENV}} {launch} -m pipeline.stages.{stage} {arguments} 2>&1 | tee {{log:q}}"
    return f"{before} && {command}" if before else command


def as_params(**slice_):
    """One stage's slice of the recipe as canonical JSON: Snakemake reruns a job when this text changes."""
    return json.dumps(slice_, sort_keys=True)


def data_inputs():
    """The competition files a stage reads, per layout; for a demo recipe, the demo rule's completion mark."""
    if DEMO:
        return {"demo": DEMO_BUILT}
    if LAYOUT == "csv":
        return {"labels": f"{DATA}/labels.csv", "train": f"{DATA}/train", "test": f"{DATA}/test"}
    return {"train": f"{DATA}/train", "valid": f"{DATA}/valid", "test": f"{DATA}/test"}


SAMPLE_SUBMISSION = f"{DATA}/{config['data']['sample_submission']}"


def sample_submission():
    """sample_submission.csv as an input when the data set has one (the demo's arrives with its data, upstream)."""
    return [SAMPLE_SUBMISSION] if not DEMO and Path(SAMPLE_SUBMISSION).exists() else []


def sample_submission_flag():
    return f"--sample {shlex.quote(SAMPLE_SUBMISSION)}" if DEMO or sample_submission() else ""


def fingerprint():
    """Changes when any image under data_dir is replaced, added or removed (Snakemake alone would miss an image
    rewritten in place inside train/): a stat() per file, once per invocation. Data built by the demo rule is
    tracked by Snakemake itself."""
    return "built by rule demo_data" if DEMO else data_fingerprint(DATA)


DATA_FINGERPRINT = fingerprint()

# The slice of the recipe that says how to read the data set (split, image stats, resize).
DATA_LAYOUT = {"layout": LAYOUT, "suffix": config["data"]["suffix"]}


# The backbone, checked before anything is planned (an unknown arch, weights that cannot be had or do not fit stop
# here); its preprocessing reaches every stage that shows it images, and the digest of its weights file's content
# keys precompute and everything after it.
def backbone_of(recipe, where=""):
    try:
        return checked_backbone(recipe["model"]["arch"], recipe["model"]["weights"])
    except BackboneProblem as problem:
        raise WorkflowError(f"{where}model: {problem}")


KFOLD = bool(FOLDS)
MEMBER_NAMES = members.names(config)
STUDENT = members.student_chain(config)  # the pseudo-label round's students, as one more member; None without it
stop_on(members.recipe_problems(config, KFOLD))
# Where one model's chain (split, activations, head, fine-tune sizes, TTA) lives: out_dir for a single split,
# out_dir/folds/<k> for each fold of a K-fold run, so every fold folder holds what a single-split run holds; with
# members, each member's folds and out-of-fold predictions under out_dir/members/<name>.
MEMBER_DIR = out("members/{member}") if MEMBER_NAMES else OUT
MODEL_DIR = f"{MEMBER_DIR}/folds/{{fold}}" if KFOLD else OUT


wildcard_constraints:
    fold=r"\d+",
    member=r"[A-Za-z][A-Za-z0-9_]*(-pseudo)?",


def model_out(path):
    return f"{MODEL_DIR}/{path}"


# How the report names one model's figures: its fold, and its member when there are several.
MODEL_LABEL = "{member}, fold {fold}" if MEMBER_NAMES else "fold {fold}"
# The blends of a recipe with members: the members' (the pseudo-label round's teacher), then with the pseudo-label
# round the members' and the students'. The last one is what calibrate, interpret and the submission use.
BLENDS = (["blend", "blend_pseudo"] if STUDENT else ["blend"]) if MEMBER_NAMES else []
FINAL_BLEND = BLENDS[-1] if BLENDS else None


def member_out(path):
    return f"{MEMBER_DIR}/{path}"


class Chain:
    """One model's chain as the rules see it: a member's recipe (or the recipe's own, without members) and what the
    rules derive from it. Paths are patterns of the {member} and {fold} wildcards."""

    def __init__(self, recipe, backbone):
        self.recipe, self.backbone = recipe, backbone
        self.model, self.head, self.finetune = recipe["model"], recipe["head"], recipe["finetune"]
        self.transforms, self.loader, self.train, self.tta = (recipe[key] for key in ("transforms", "loader", "train",
                                                                                        "tta"))
        self.runtime = {"seed": recipe["seed"], "device": recipe["device"], "amp": recipe["amp"]}
        # Data-parallel training draws other batches and augmentations: part of the training stages' slice when used.
        self.training_runtime = {**self.runtime, "devices": DEVICES} if DEVICES > 1 else self.runtime
        self.preprocessing = backbone["preprocessing"]
        self.weights = {"weights_digest": backbone["weights_digest"], "preprocessing": self.preprocessing}
        self.resized = out(f"resized/{recipe['images']['shorter_side']}")
        # How the cache resized the images: the training stages keep it in each checkpoint, for predict.
        self.resize_rule = {key: recipe["images"][key] for key in ("shorter_side", "jpeg_quality", "jpeg_draft")}
        self.final_size = self.finetune[-1]["size"] if self.finetune else self.head["size"]
        self.activations = model_out(f"activations/{self.head['size']}")

    def finetune_names(self):
        """One folder per progressive size, in order: 1_224, 2_299, ..."""
        return [f"{index}_{step['size']}" for index, step in enumerate(self.finetune, start=1)]

    def finetune_step(self, name):
        return self.finetune[self.finetune_names().index(name)]

    def previous_checkpoint(self, name):
        names = self.finetune_names()
        position = names.index(name)
        return model_out("head/model.pt") if position == 0 else model_out(f"finetune/{names[position - 1]}/model.pt")

    def final_checkpoint(self):
        names = self.finetune_names()
        return model_out(f"finetune/{names[-1]}/model.pt") if names else model_out("head/model.pt")

    def lr_find_names(self):
        """The fine-tune sizes that run lr_find before their fits."""
        return [name for name, step in zip(self.finetune_names(), self.finetune) if step["lr_find"]]


def member_chain(name):
    """A member's recipe, checked as a whole recipe is (each problem prefixed with the member), with its backbone."""
    recipe = members.member_recipe(config, name)
    stop_on([f"members.{name}: {problem}" for problem in recipe_checks.schema_problems(recipe, yaml.safe_load(Path(SCHEMA).read_text()))])
    validate(recipe, SCHEMA)
    stop_on([f"members.{name}: {problem}" for problem in recipe_checks.runtime_problems(recipe)
             + recipe_checks.finetune_problems(recipe) + recipe_checks.tta_problems(recipe)])
    backbone = backbone_of(recipe, f"members.{name}: ")
    stop_on([f"members.{name}: {problem}" for problem in recipe_checks.regularise_problems(recipe, backbone["source"])])
    return Chain(recipe, backbone)


BACKBONE = backbone_of(config)
stop_on(recipe_checks.regularise_problems(config, BACKBONE["source"]))
if MEMBER_NAMES:
    CHAINS = {name: member_chain(name) for name in MEMBER_NAMES}
    stop_on(members.uniform_problems(config, {name: CHAINS[name].recipe for name in MEMBER_NAMES}))
    if STUDENT:
        CHAINS[STUDENT] = CHAINS[members.student(config)]
        stop_on(members.soft_target_problems(config, CHAINS[STUDENT].recipe))
    PRIMARY = CHAINS[MEMBER_NAMES[0]]  # what the stages after the blend show images with (preview, interpret)
else:
    CHAINS = {None: Chain(config, BACKBONE)}
    PRIMARY = CHAINS[None]
MODEL_CHAINS = [name for name in CHAINS if name is not None]  # every member, the students last; [] without members


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


def for_every_model(path, chain=None):
    """A per-model path for every fold of every member, or of the member `chain`; without members (one chain, whose
    name is None), for_every_fold's."""
    if not MEMBER_NAMES:
        return for_every_fold(path)
    return expand(path, member=[chain] if chain else MODEL_CHAINS, fold=FOLDS)


def split_params():
    """The split stage's slice: a K-fold run assigns every fold at once, so the folds it runs (and the single-split
    `fold`) stay out of it and adding a fold leaves the split, and every other fold, alone."""
    split = config["split"]
    if not KFOLD:
        return split
    return {"method": split["method"], "n_folds": split["n_folds"], "seed": split["seed"], "assign_folds": True}


def snapshot_cycles(step):
    """The SGDR cycles of a size's last fit whose end weights are kept besides the final ones (1-based; the last
    cycle's weights are model.pt itself)."""
    last_fit, k = step["fits"][-1], step["snapshots"]
    return list(range(last_fit["n_cycle"] - k + 1, last_fit["n_cycle"]))


def snapshot_folder(name):
    return model_out(f"finetune/{name}/snapshots")


def snapshot_files(name, wildcards):
    """The kept snapshots of one fine-tune size (in its fold), earliest first: the stage's --snapshots paths."""
    folder = concrete(snapshot_folder(name), wildcards)
    return [f"{folder}/cycle_{cycle}.pt" for cycle in snapshot_cycles(model_chain(wildcards).finetune_step(name))]


def snapshot_flag(wildcards):
    files = snapshot_files(wildcards.name, wildcards)
    return " ".join(["--snapshots", *map(shlex.quote, files)]) if files else ""


def tta_snapshots(wildcards):
    """The last size's snapshots folder, an input of TTA ([] without fine-tuning)."""
    names = model_chain(wildcards).finetune_names()
    return [concrete(snapshot_folder(names[-1]), wildcards)] if names else []


def tta_checkpoints(wildcards):
    """The checkpoints TTA averages: the last size's kept snapshots, then its final weights."""
    names = model_chain(wildcards).finetune_names()
    snapshots = snapshot_files(names[-1], wildcards) if names else []
    return snapshots + [concrete(model_chain(wildcards).final_checkpoint(), wildcards)]


def finetune_params(wildcards):
    """A size's slice, less `lr_find`: that is the lr_find rule's job, and must not rerun the fits."""
    c = model_chain(wildcards)
    step = {key: value for key, value in c.finetune_step(wildcards.name).items() if key != "lr_find"}
    return as_params(arch=c.model["arch"], **step, **c.transforms, **c.loader, **c.training_runtime, **c.train,
                     images=c.resize_rule, preprocessing=c.preprocessing)


# The fine-tune sizes that run lr_find in any chain: the lr_find rule's names.
LR_FIND_NAMES = sorted({name for c in CHAINS.values() for name in c.lr_find_names()})


def lr_find_params(wildcards):
    c = model_chain(wildcards)
    step = c.finetune_step(wildcards.name)
    training = {key: c.train[key] for key in ("optimizer", "weight_decay", "train_bn")}
    return as_params(arch=c.model["arch"], size=step["size"], unfreeze=step["unfreeze"], bn_freeze=step["bn_freeze"],
                     lr=step["fits"][0]["lr"], **training,
                     **c.transforms, **c.loader, **c.runtime, preprocessing=c.preprocessing)


def caption(name):
    """A report caption (rules/report/<name>.rst)."""
    return f"report/{name}.rst"


def training_report(path, name, stage):
    """A training figure in the report: category Training, one subcategory per stage (and fold)."""
    subcategory = f"{MODEL_LABEL}, {stage}" if KFOLD else stage
    return report(path, caption=caption(name), category="2. Training", subcategory=subcategory)


def final_outputs():
    """What a plain `snakemake` builds: the submission, the scores, and every figure and table the report shows.
    Called by `rule all` once every rule file is included (it names rules' outputs)."""
    lr_find_plots = [plot for name, c in CHAINS.items() for step in c.lr_find_names()
                     for plot in for_every_model(model_out(f"finetune/{step}/lr_find.png"), name)]
    member_results = [member_out(name) for name in ("oof.csv", "oof/cv_metrics.json")] if MEMBER_NAMES else []
    blend_results = [out(f"{blend}/{name}") for blend in BLENDS for name in ("weights.json", "correlation.png")]
    return [
        out("submission.csv"),
        out("metrics.json"),
        out("stats/summary.json"),
        out("plots/augmentations.png"),
        *for_every_model(model_out("tta/confusion_matrix.png")),
        *([out("oof.csv"), out("cv_metrics.json")] if KFOLD and not MEMBER_NAMES else []),
        *([out("cv_metrics.json")] if MEMBER_NAMES else []),
        *for_every_model_level(member_results),
        *blend_results,
        *rules.interpret.output,
        *rules.report_tables.output,
        *lr_find_plots,
    ]


def for_every_model_level(paths):
    return [path for pattern in paths for path in expand(pattern, member=MODEL_CHAINS)]


# One run per out_dir, from whichever working directory: held from the first job to the end of the run (a dry run,
# or one with nothing to do, takes nothing).
HELD_LOCKS = []  # the open lock file: the flock lasts as long as it stays open


def slurm_requests():
    """What each cluster job of this run will ask Slurm for, once per distinct request."""
    requests = set()
    for job in workflow.dag.needrun_jobs():
        if job.is_local:
            continue
        mem_mb = job.resources.get("mem_mb")
        requests.add(slurm_check.Request(job.rule.name, job.resources.get("slurm_partition"),
                                         int(job.resources.get("cpus_per_task") or job.threads),
                                         mem_mb if isinstance(mem_mb, int) else None))
    return sorted(requests, key=lambda request: request.rule)


onstart:
    try:
        HELD_LOCKS.append(hold(OUT))
    except OutDirInUse as in_use:
        raise WorkflowError(str(in_use))
    # On a cluster, a job no node can run would wait in the queue for ever: stop before submitting anything.
    if getattr(workflow.executor_plugin, "name", None) == "slurm" and (cluster := slurm_check.cluster_partitions()):
        stop_on(slurm_check.request_problems(slurm_requests(), *cluster), "jobs no node of the cluster can run")
