"""One model's chain as the rules see it: a member's recipe (or the recipe's own, without members), its checked
backbone, and what the rules derive from them. Paths are patterns of the {fold} wildcard.

Members share work: where two members' chains agree up to a stage (the same resize cache and the same slices of
every stage up to it), the later member reads that stage's outputs from the earlier member's folder instead of
computing them again (`share_work`). A sweep's trial that changes only the fine-tune lrs thus reuses the
activations and the head of the trial before it.
"""
from __future__ import annotations

import hashlib
import json

from pipeline.workflow.slices import stage_slice


def snapshot_cycles(step: dict) -> list[int]:
    """The SGDR cycles of a size's last fit whose end weights are kept besides the final ones (1-based; the last
    cycle's weights are model.pt itself)."""
    last_fit, k = step["fits"][-1], step["snapshots"]
    return list(range(last_fit["n_cycle"] - k + 1, last_fit["n_cycle"]))


class Chain:
    """`model_dir`: the folder pattern of one model (out_dir, or out_dir/folds/{fold}, or a member's);
    `devices`: the training stages' data-parallel processes."""

    def __init__(self, recipe: dict, backbone: dict, out_dir: str, model_dir: str, devices: int = 1,
                 name: str | None = None):
        self.recipe, self.backbone, self.model_dir, self.devices, self.name = recipe, backbone, model_dir, devices, name
        self.owners: dict[str, str] = {}  # stage -> the member whose outputs this chain reads (share_work)
        self.model, self.head, self.finetune, self.tta = (recipe[key] for key in ("model", "head", "finetune", "tta"))
        self.preprocessing = backbone["preprocessing"]
        self.weights = {"weights_digest": backbone["weights_digest"], "preprocessing": self.preprocessing}
        self.resized = f"{out_dir}/resized/{recipe['images']['shorter_side']}"
        # How the cache resized the images: the training stages keep it in each checkpoint, for predict.
        self.resize_rule = {key: recipe["images"][key] for key in ("shorter_side", "jpeg_quality", "jpeg_draft")}
        self.final_size = self.finetune[-1]["size"] if self.finetune else self.head["size"]

    @property
    def activations(self) -> str:
        return self.path(f"activations/{self.head['size']}")

    def path(self, relative: str) -> str:
        """A file of this model: in its own folder, or in the folder of the member whose work it shares."""
        return f"{self.stage_dir(stage_of(relative))}/{relative}"

    def stage_dir(self, stage: str | None) -> str:
        """The model folder (pattern of {fold}) holding a stage's outputs."""
        owner = self.owners.get(stage, self.name)
        return self.model_dir if owner is None else self.model_dir.replace("{member}", owner)

    def precompute_slice(self) -> str:
        return self.slice("precompute", **self.weights)

    def head_slice(self) -> str:
        return self.training_slice("train_head", **self.weights)

    def finetune_slice(self, name: str) -> str:
        """A size's slice, less `lr_find`: that is the lr_find rule's job, and must not rerun the fits."""
        step = {key: value for key, value in self.finetune_step(name).items() if key != "lr_find"}
        return self.training_slice("finetune", sections={"finetune": step}, preprocessing=self.preprocessing)

    def lr_find_slice(self, name: str) -> str:
        step = self.finetune_step(name)
        return self.slice("lr_find", sections={"finetune": step}, lr=step["fits"][0]["lr"],
                          preprocessing=self.preprocessing)

    def tta_slice(self) -> str:
        return self.slice("tta", preprocessing=self.preprocessing)

    def identities(self) -> dict[str, str]:
        """Each per-model stage's identity: a digest of its slice and of everything upstream of it (the resize
        cache, the slices of the stages before it); two chains with equal identities compute the same files."""
        upstream = [self.resized, self.precompute_slice()]
        found = {"precompute": digest(upstream)}
        upstream.append(self.head_slice())
        found["head"] = digest(upstream)
        for name in self.finetune_names():
            lr_find = self.lr_find_slice(name) if self.finetune_step(name)["lr_find"] else None
            upstream += [self.finetune_slice(name), lr_find]
            found[f"finetune/{name}"] = digest(upstream)
        upstream.append(self.tta_slice())
        found["tta"] = digest(upstream)
        return found

    def slice(self, stage: str, **given) -> str:
        """The stage's slice of this chain's recipe (pipeline.workflow.slices)."""
        return stage_slice(stage, self.recipe, **given)

    def training_slice(self, stage: str, **given) -> str:
        """A training stage's slice: data-parallel training draws other batches and augmentations, so `devices` is
        part of it when used (and absent otherwise, leaving single-process slices as they were)."""
        data_parallel = {"devices": self.devices} if self.devices > 1 else {}
        return self.slice(stage, images=self.resize_rule, **data_parallel, **given)

    def finetune_names(self) -> list[str]:
        """One folder per progressive size, in order: 1_224, 2_299, ..."""
        return [f"{index}_{step['size']}" for index, step in enumerate(self.finetune, start=1)]

    def finetune_step(self, name: str) -> dict:
        return self.finetune[self.finetune_names().index(name)]

    def previous_checkpoint(self, name: str) -> str:
        """What a fine-tune size starts from: the head's weights for the first size, else the size before's."""
        names = self.finetune_names()
        position = names.index(name)
        return self.path("head/model.pt" if position == 0 else f"finetune/{names[position - 1]}/model.pt")

    def final_checkpoint(self) -> str:
        return self.path(self.final_checkpoint_file())

    def final_checkpoint_file(self) -> str:
        """The final weights, relative to a model folder."""
        names = self.finetune_names()
        return f"finetune/{names[-1]}/model.pt" if names else "head/model.pt"

    def lr_find_names(self) -> list[str]:
        """The fine-tune sizes that run lr_find before their fits."""
        return [name for name, step in zip(self.finetune_names(), self.finetune) if step["lr_find"]]

    def snapshot_folder(self, name: str) -> str:
        return self.path(f"finetune/{name}/snapshots")

    def snapshot_files(self, name: str) -> list[str]:
        """The kept snapshots of one fine-tune size, earliest first (patterns of the job's wildcards)."""
        folder = self.snapshot_folder(name)
        return [f"{folder}/cycle_{cycle}.pt" for cycle in snapshot_cycles(self.finetune_step(name))]

    def tta_checkpoints(self) -> list[str]:
        """The checkpoints TTA averages: the last size's kept snapshots, then its final weights."""
        names = self.finetune_names()
        return (self.snapshot_files(names[-1]) if names else []) + [self.final_checkpoint()]


def stage_of(relative: str) -> str | None:
    """The per-model stage whose outputs a model-relative path is among; None for the model's own files (its fold
    split, logs, benchmarks)."""
    parts = relative.split("/")
    if parts[0] == "finetune" and len(parts) > 1:
        return f"finetune/{parts[1]}"
    return {"activations": "precompute", "head": "head", "tta": "tta", "metrics.json": "tta"}.get(parts[0])


def digest(values: list) -> str:
    return hashlib.sha256(json.dumps(values).encode()).hexdigest()[:16]


def share_work(chains: dict[str | None, Chain], apart: tuple = ()) -> None:
    """Each chain reads a stage's outputs from the first chain (in the members' order) with the same identity up to
    it. Chains in `apart` share nothing (the pseudo-label students: their fold splits are their own)."""
    first_with: dict[str, str] = {}
    for name, chain in chains.items():
        if name is None or name in apart:
            continue
        chain.owners = {stage: first_with.setdefault(identity, name) for stage, identity in chain.identities().items()}
