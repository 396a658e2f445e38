"""Megatron-Core's training engine around a vlft-built model, as Megatron-LM's training.py wires it, with public
entry points only: which parameters train (vlft's freeze flags), Megatron's DistributedDataParallel, its
optimizer (AdamW; sharded over data-parallel ranks with --use_distributed_optimizer) and its learning-rate and
weight-decay schedule (which alone applies the no-decay rule for norms and biases)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlft.families.base import Family
from vlft.megatron.arguments import MegatronSftArguments
from vlft.megatron.convert import VISION
from vlft.train.modules import module_part, trainable_parts

MTP = "language_model.mtp."  # the multi-token-prediction head's parameters in vlft's Megatron-Core model


def training_overrides(args: MegatronSftArguments, cuda: bool) -> dict:
    """TransformerConfig settings of a training run, over the conversion's (vlft/megatron/config.py). Without CUDA
    nothing is recomputed (Megatron-Core's recompute saves and restores CUDA's random state): the same step, with
    more activation memory."""
    # A multi-token-prediction head (Qwen3.5's) is kept, frozen, and adds no loss: vlft sft does not train it
    # (transformers does not load it), and conversions carry it unchanged.
    overrides = dict(calculate_per_token_loss=args.calculate_per_token_loss, mtp_loss_scaling_factor=0.0)
    if args.recompute_granularity != "none" and cuda:
        overrides.update(recompute_granularity=args.recompute_granularity)
    if args.recompute_granularity == "full" and cuda:
        overrides.update(recompute_method=args.recompute_method, recompute_num_layers=args.recompute_num_layers)
    return overrides


def moe_overrides(args: MegatronSftArguments) -> dict:
    """The MoE settings a training run may change."""
    overrides = dict(moe_token_dispatcher_type=args.moe_token_dispatcher_type,
                     moe_grouped_gemm=args.moe_grouped_gemm,  # model.py: vlft's grouped experts, else SequentialMLP
                     moe_aux_loss_coeff=args.moe_aux_loss_coeff,
                     moe_router_load_balancing_type="aux_loss" if args.moe_aux_loss_coeff > 0 else "none")
    if args.moe_expert_capacity_factor is not None:
        overrides.update(moe_expert_capacity_factor=args.moe_expert_capacity_factor,
                         moe_pad_expert_input_to_capacity=False)
    return overrides


def parameter_part(name: str, family: Family):
    """The part (vit / aligner / llm) of a parameter of vlft's Megatron-Core model: the vision tower keeps its
    HF names under `visual.visual.`, everything else is the language model."""
    if name.startswith(VISION):
        return module_part(f"{family.modules.vision_tower}.{name[len(VISION):]}", family)
    return "llm"


def freeze(model, family: Family, args: MegatronSftArguments) -> None:
    """Full fine-tuning: the unfrozen parts train, with the MoE routers (the experts' router, and the shared
    expert's gate where there is one, as vlft sft's family routers) unless --freeze_router true."""
    from megatron.core.transformer.moe.router import TopKRouter
    from megatron.core.transformer.moe.shared_experts import SharedExpertMLP

    parts = trainable_parts(args.freeze_vit, args.freeze_aligner, args.freeze_llm)
    for name, param in model.named_parameters():
        param.requires_grad = parameter_part(name, family) in parts and not name.startswith(MTP)
    if args.freeze_router:
        for module in model.modules():
            if isinstance(module, TopKRouter):
                module.requires_grad_(False)
            if isinstance(module, SharedExpertMLP) and getattr(module, "gate_weight", None) is not None:
                module.gate_weight.requires_grad = False


@dataclass
class Engine:
    ddp: object  # megatron.core.distributed.DistributedDataParallel
    optimizer: object
    scheduler: object


def build_engine(model, config, args: MegatronSftArguments, dtype: torch.dtype, train_iters: int,
                 warmup_iters: int, gloo_groups: bool) -> Engine:
    from megatron.core.distributed import (DistributedDataParallel, DistributedDataParallelConfig,
                                           finalize_model_grads)
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    ddp = DistributedDataParallel(config, DistributedDataParallelConfig(
        grad_reduce_in_fp32=True, overlap_grad_reduce=False, use_distributed_optimizer=args.use_distributed_optimizer,
        average_in_collective=False), model)
    # What Megatron-LM's training loop gives the schedules: no gradient sync between micro-batches, and the
    # data-parallel reduction (divided by the step's trained tokens) after the last.
    config.no_sync_func = ddp.no_sync
    config.finalize_model_grads_func = finalize_model_grads
    optimizer = get_megatron_optimizer(OptimizerConfig(
        optimizer="adam", lr=args.lr, min_lr=args.min_lr, weight_decay=args.weight_decay, adam_beta1=args.adam_beta1,
        adam_beta2=args.adam_beta2, adam_eps=args.adam_eps, clip_grad=args.clip_grad,
        use_distributed_optimizer=args.use_distributed_optimizer, params_dtype=dtype,
        bf16=dtype == torch.bfloat16, fp16=dtype == torch.float16), [ddp], use_gloo_process_groups=gloo_groups)
    scheduler = OptimizerParamScheduler(
        optimizer, init_lr=0.0, max_lr=args.lr, min_lr=args.min_lr, lr_warmup_steps=warmup_iters,
        lr_decay_steps=max(train_iters, warmup_iters + 1), lr_decay_style=args.lr_decay_style,
        start_wd=args.weight_decay, end_wd=args.weight_decay, wd_incr_steps=max(train_iters, 1),
        wd_incr_style="constant")
    return Engine(ddp, optimizer, scheduler)
