"""transformers' Trainer with what vlft adds through its public methods: per-part learning rates,
real-token throughput and memory in the logs, balanced vision-tower calls under ZeRO-3 and FSDP, atomic
checkpoints (checkpointing.py) and the chunked loss (chunked_loss.py)."""

from __future__ import annotations

import contextlib
import resource
import time

import torch
from transformers import Trainer

from vlft.families.base import Family
from vlft.train.checkpointing import AtomicCheckpoints
from vlft.train.chunked_loss import ChunkedLoss
from vlft.train.fsdp import FsdpOnCpu
from vlft.train.flops import device_peak_flops, sequence_square_sum, training_flops
from vlft.train.modules import Part, module_part
from vlft.train.sequence_parallel import SequenceParallel, shard_cross_entropy
from vlft.train.weighted_loss import scaled_cross_entropy
from vlft.train.zero3 import BalancedVisionCalls


class LoraLayers:
    """The model's PEFT tuner layers, found once; `input_casting_off()` does what PEFT's
    `disable_input_dtype_casting(model)` does (each layer's `cast_input_dtype_enabled` off, then restored)
    without walking every module of the model on each call."""

    def __init__(self, model: torch.nn.Module):
        from peft.tuners.tuners_utils import BaseTunerLayer

        self.layers = [module for module in model.modules() if isinstance(module, BaseTunerLayer)]

    @contextlib.contextmanager
    def input_casting_off(self):
        saved = [layer.cast_input_dtype_enabled for layer in self.layers]
        for layer in self.layers:
            layer.cast_input_dtype_enabled = False
        try:
            yield
        finally:
            for layer, value in zip(self.layers, saved):
                layer.cast_input_dtype_enabled = value


class SftTrainer(AtomicCheckpoints, FsdpOnCpu, Trainer):
    """Trainer for Qwen-VL fine-tuning; see the module docstring for what differs."""

    # transformers methods replaced here or in AtomicCheckpoints (vlft/train/sft.py lists why); a rename in
    # transformers fails tests/train/test_step_changes.py by name instead of silently skipping the override.
    OVERRIDES = ("create_optimizer", "training_step", "prediction_step", "_clip_grad_norm", "floating_point_ops",
                 "compute_loss", "log", "train", "_save_checkpoint", "create_accelerator_and_postprocess",
                 "get_train_dataloader", "get_eval_dataloader")

    def __init__(self, *args, family: Family, part_lrs: dict[Part, float], balanced_vision_calls: bool,
                 checkpoint_extras=None, chunked_loss: ChunkedLoss | None = None, cuda_graphs: bool = False,
                 sequence_parallel: SequenceParallel | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.sequence_parallel = sequence_parallel
        self.chunked_loss = chunked_loss
        self.cuda_graphs = cuda_graphs
        self.checkpoint_extras = checkpoint_extras
        self.family = family
        self.part_lrs = part_lrs
        # Sharded parameters (ZeRO-3, FSDP) are gathered by every rank together: each runs the vision tower.
        self.vision_calls = BalancedVisionCalls(self.model) if balanced_vision_calls else None
        self._tokens = 0
        self._vision_tokens = 0
        self._square_sum = 0
        self._tokens_since = time.perf_counter()
        self._peak = device_peak_flops(torch.cuda.get_device_name()) if torch.cuda.is_available() else None
        self._lora_layers: LoraLayers | None = None
        self._flops_parameters: int | None = None
        self._trained_parameters: list[torch.nn.Parameter] | None = None

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

    def training_step(self, model, inputs, num_items_in_batch=None):
        """One micro-step; LoRA inputs stay in half precision while the step autocasts to it.

        PEFT keeps adapters in float32 and by default copies every adapted layer's input to float32 (and
        autocast copies it back for the matmul). Measured on an H100 through bench/sft_qwen3_vl_4b.py
        (4B LoRA, same data): 5,134 tokens/s with the copies, 5,754 without. Only inside the step, and only
        where autocast is on; the float32 adapter weights and everything outside training are unchanged.
        The adapted layers are found once (LoraLayers): PEFT's own `disable_input_dtype_casting` walks the
        whole model twice per call: 6-8 ms per step for the 4B model on a 2-core CPU, 0.55 ms this way
        (bench/lora_cast_switch.py).
        """
        if self.cuda_graphs:  # a new step: CUDA graph outputs of the last one may be overwritten
            torch.compiler.cudagraph_mark_step_begin()
        # DeepSpeed runs half precision without autocast: there the copies keep the dtypes matched.
        autocasts = (self.args.bf16 or self.args.fp16) and not self.is_deepspeed_enabled
        if not autocasts:
            return super().training_step(model, inputs, num_items_in_batch)
        if self._lora_layers is None:
            self._lora_layers = LoraLayers(model)
        with self._lora_layers.input_casting_off():
            return super().training_step(model, inputs, num_items_in_batch)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """transformers' evaluation step, started as a new CUDA graph step under reduce-overhead (as training)."""
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)

    def _clip_grad_norm(self, model):
        """Clips over the parameters that train (listed once) instead of `model.parameters()`, a walk over all of
        a 4B model's ~4,400 modules each step. bench/trainer_step_gaps.py on an H200: clipping took 13.7 ms of
        host time per step with the GPU idle before, 8.2 ms after (on a machine with a slower host overall).
        DeepSpeed and FSDP clip as transformers does."""
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            return super()._clip_grad_norm(model)
        if self._trained_parameters is None:
            self._trained_parameters = [p for p in model.parameters() if p.requires_grad]
        return self.accelerator.clip_grad_norm_(self._trained_parameters, self.args.max_grad_norm)

    def floating_point_ops(self, inputs) -> int:
        """transformers' estimate (6 x tokens x non-embedding parameters, for `total_flos`), with the parameter
        count taken once: the Trainer asks every step, and counting walks all of the 4B model's modules
        (6.5-8.2 ms on a 2-core CPU, bench/lora_cast_switch.py, in a step the host bounds)."""
        main_input = getattr(self.model, "main_input_name", "input_ids")
        if main_input not in inputs or not hasattr(self.model, "num_parameters"):
            return 0
        if self._flops_parameters is None:
            self._flops_parameters = self.model.num_parameters(exclude_embeddings=True)
        tokens = inputs[main_input].numel() - inputs.get("row_padding", 0)  # a fixed-shape row's padding: not counted
        return 6 * tokens * self._flops_parameters

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:  # counted on the device and read at log time: no host sync per step
            mask = inputs.get("attention_mask")
            padding = inputs.get("row_padding", 0)  # a fixed-length row's padding segment (collator.py)
            # Under sequence parallelism the ranks of a group share one row: each counts its share.
            share = self.sequence_parallel.shard.size if self.sequence_parallel is not None else 1
            self._tokens += mask.sum() if mask is not None else (inputs["input_ids"].numel() - padding) / share
            if self._peak is not None:
                self._square_sum += sequence_square_sum(inputs) / share
                if "mm_token_type_ids" in inputs:
                    self._vision_tokens += (inputs["mm_token_type_ids"] > 0).sum()
        if self.vision_calls is not None:
            self.vision_calls.expect(inputs)
        if self.sequence_parallel is not None:
            return self._sequence_parallel_loss(model, inputs, return_outputs)
        if self.chunked_loss is not None and model.training and not return_outputs:
            return self.chunked_loss(model, inputs)
        if "loss_scale" in inputs:
            return self._scaled_loss(model, inputs, return_outputs)
        return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                    num_items_in_batch=num_items_in_batch)

    def _scaled_loss(self, model, inputs: dict, return_outputs: bool):
        """--loss_scale's weighted loss (weighted_loss.scaled_cross_entropy) from the model's whole logits, where
        the chunked loss is off; with an MoE's aux loss added as transformers adds it."""
        inputs = dict(inputs)
        labels, loss_scale = inputs.pop("labels"), inputs.pop("loss_scale")
        outputs = model(**inputs)
        loss = scaled_cross_entropy(outputs.logits, labels.to(outputs.logits.device), loss_scale)
        aux_loss = getattr(outputs, "aux_loss", None)
        if aux_loss is not None:
            coefficient = self.accelerator.unwrap_model(model).config.get_text_config().router_aux_loss_coef
            loss = loss + coefficient * aux_loss.to(loss.device)
        return (loss, outputs) if return_outputs else loss

    def _sequence_parallel_loss(self, model, inputs: dict, return_outputs: bool):
        """This rank's part of its group's row loss (sequence_parallel.py): targets shifted before the split."""
        inputs = dict(inputs)
        targets = self.sequence_parallel.targets(inputs.pop("labels"))
        if self.chunked_loss is not None and model.training and not return_outputs:
            return self.sequence_parallel.loss(self.chunked_loss.summed(model, inputs, targets), targets)
        outputs = model(**inputs)
        loss = self.sequence_parallel.loss(shard_cross_entropy(outputs.logits, targets), targets)
        return (loss, outputs) if return_outputs else loss

    def get_train_dataloader(self):
        """transformers' loader; under sequence parallelism its batches dealt to sequence groups, not ranks."""
        loader = super().get_train_dataloader()
        return loader if self.sequence_parallel is None else self.sequence_parallel.deal_batches_to_groups(loader)

    def get_eval_dataloader(self, eval_dataset=None):
        """As get_train_dataloader, for evaluation."""
        loader = super().get_eval_dataloader(eval_dataset)
        return loader if self.sequence_parallel is None else self.sequence_parallel.deal_batches_to_groups(loader)

    def log(self, logs: dict, start_time: float | None = None) -> None:
        """Adds tokens_per_second (real tokens, all ranks), MFU on known GPUs and peak memory to the logs."""
        if "loss" in logs:
            now = time.perf_counter()
            elapsed = max(now - self._tokens_since, 1e-9)
            tokens, vision_tokens, square_sum = int(self._tokens), int(self._vision_tokens), int(self._square_sum)
            logs["tokens_per_second"] = round(tokens * self.args.world_size / elapsed, 1)
            if self._peak is not None:  # per GPU, from this rank's tokens
                config = self.accelerator.unwrap_model(self.model).config
                flops = training_flops(self.family, config, tokens, vision_tokens, square_sum)
                logs["mfu"] = round(flops / elapsed / self._peak, 4)
            self._tokens, self._vision_tokens, self._square_sum, self._tokens_since = 0, 0, 0, now
            if torch.cuda.is_available():
                logs["memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            else:
                logs["memory_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
        super().log(logs, start_time)
