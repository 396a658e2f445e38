"""transformers' Trainer with what vlft adds through its public methods: per-part learning rates,
real-token throughput and memory in the logs, and a vision pass on text-only batches under ZeRO-3."""

from __future__ import annotations

import resource
import time

import torch
from transformers import Trainer

from vlft.families.base import Family
from vlft.train.modules import Part, module_part


def _tensors(output) -> list[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, (list, tuple)):
        return [t for item in output for t in _tensors(item)]
    if hasattr(output, "values"):
        return [t for item in output.values() for t in _tensors(item)]
    return []


class SftTrainer(Trainer):
    """Trainer for Qwen-VL fine-tuning; see the module docstring for what differs."""

    def __init__(self, *args, family: Family, part_lrs: dict[Part, float], zero3: bool, **kwargs):
        super().__init__(*args, **kwargs)
        self.family = family
        self.part_lrs = part_lrs
        self.zero3 = zero3
        self._tokens = 0
        self._tokens_since = time.perf_counter()

    def create_optimizer(self, model=None):
        """AdamW with one group per (learning rate, weight decay) pair; --vit_lr / --aligner_lr apply."""
        if self.optimizer is not None:
            return self.optimizer
        model = self.model if model is None else model
        decay = set(self.get_decay_parameter_names(model))
        groups: dict[tuple[float, float], list] = {}
        for name, param in model.named_parameters():
            if not param.requires_grad:
                continue
            lr = self.part_lrs.get(module_part(name, self.family), self.args.learning_rate)
            weight_decay = self.args.weight_decay if name in decay else 0.0
            groups.setdefault((lr, weight_decay), []).append(param)
        optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(self.args, model)
        optimizer_kwargs.pop("lr", None)
        self.optimizer = optimizer_cls([{"params": p, "lr": lr, "weight_decay": wd}
                                        for (lr, wd), p in groups.items()], lr=self.args.learning_rate,
                                       **optimizer_kwargs)
        return self.optimizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:
            mask = inputs.get("attention_mask")
            self._tokens += int(mask.sum()) if mask is not None else inputs["input_ids"].numel()
        result = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                      num_items_in_batch=num_items_in_batch)
        if self.zero3 and model.training and "pixel_values" not in inputs and "pixel_values_videos" not in inputs:
            # Under ZeRO-3 every rank must gather the vision tower's shards in step; a text-only batch on
            # one rank would otherwise hang the others. The dummy pass adds exactly zero to the loss.
            dummy = self._dummy_vision_loss(model)
            result = (result[0] + dummy, result[1]) if return_outputs else result + dummy
        return result

    def _dummy_vision_loss(self, model) -> torch.Tensor:
        visual = next(m for name, m in model.named_modules() if name.split(".")[-1] == "visual")
        config = visual.config
        patch_dim = config.in_channels * config.temporal_patch_size * config.patch_size ** 2
        merge = config.spatial_merge_size
        pixels = torch.zeros(merge * merge, patch_dim, dtype=visual.dtype, device=visual.device)
        grid = torch.tensor([[1, merge, merge]], device=visual.device)
        return sum(t.float().sum() for t in _tensors(visual(pixels, grid_thw=grid))) * 0.0

    def log(self, logs: dict, start_time: float | None = None) -> None:
        """Adds tokens_per_second (real tokens, all ranks) and peak memory to the training logs."""
        if "loss" in logs:
            now = time.perf_counter()
            logs["tokens_per_second"] = round(self._tokens * self.args.world_size / max(now - self._tokens_since,
                                                                                        1e-9), 1)
            self._tokens, self._tokens_since = 0, now
            if torch.cuda.is_available():
                logs["memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            else:
                logs["memory_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
        super().log(logs, start_time)
