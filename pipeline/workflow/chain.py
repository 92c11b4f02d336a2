"""One model's chain as the rules see it: a member's recipe (or the recipe's own, without members), its checked
backbone, and what the rules derive from them. Paths are patterns of the {member} and {fold} wildcards."""
from __future__ import annotations

from pipeline.workflow.slices import stage_slice


def snapshot_cycles(step: dict) -> list[int]:
    """The SGDR cycles of a size's last fit whose end weights are kept besides the final ones (1-based; the last
    cycle's weights are model.pt itself)."""
    last_fit, k = step["fits"][-1], step["snapshots"]
    return list(range(last_fit["n_cycle"] - k + 1, last_fit["n_cycle"]))


class Chain:
    """`model_dir`: the folder pattern of one model (out_dir, or out_dir/folds/{fold}, or a member's);
    `devices`: the training stages' data-parallel processes."""

    def __init__(self, recipe: dict, backbone: dict, out_dir: str, model_dir: str, devices: int = 1):
        self.recipe, self.backbone, self.model_dir, self.devices = recipe, backbone, model_dir, devices
        self.model, self.head, self.finetune, self.tta = (recipe[key] for key in ("model", "head", "finetune", "tta"))
        self.preprocessing = backbone["preprocessing"]
        self.weights = {"weights_digest": backbone["weights_digest"], "preprocessing": self.preprocessing}
        self.resized = f"{out_dir}/resized/{recipe['images']['shorter_side']}"
        # How the cache resized the images: the training stages keep it in each checkpoint, for predict.
        self.resize_rule = {key: recipe["images"][key] for key in ("shorter_side", "jpeg_quality", "jpeg_draft")}
        self.final_size = self.finetune[-1]["size"] if self.finetune else self.head["size"]
        self.activations = self.path(f"activations/{self.head['size']}")

    def path(self, relative: str) -> str:
        return f"{self.model_dir}/{relative}"

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
        names = self.finetune_names()
        return self.path(f"finetune/{names[-1]}/model.pt" if names else "head/model.pt")

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
