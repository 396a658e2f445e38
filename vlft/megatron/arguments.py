"""`vlft megatron sft`'s arguments: Megatron-SWIFT's names (`megatron sft`) for the engine, the schedule and the
checkpoints, with `vlft sft`'s model, template and dataset arguments (the same data pipeline). Flags of
Megatron-SWIFT that vlft does not run are refused together, each with what to use instead (MEGATRON_REFUSED)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from vlft.arguments import DatasetArguments, ModelArguments, PackingLengthArguments, TemplateArguments, not_positive
from vlft.megatron.parallel import ParallelSizes

_FALSE = frozenset({"false", "0", "no", "n", "off"})
_TRUE = frozenset({"true", "1", "yes", "y", "on"})
_NONE: frozenset[str] = frozenset()
_LOCAL_SPEC = ("vlft builds Megatron-Core's local layer spec (no TransformerEngine), where this fused kernel does "
               "not exist")
_OFFLOAD = ("optimizer offloading needs TransformerEngine's and Megatron-Core's hybrid-device optimizer; shard the "
            "optimizer over data-parallel ranks instead (--use_distributed_optimizer true, the default)")

# Megatron-SWIFT flags this command does not take: name -> (values that ask for what vlft does anyway, accepted
# and dropped; why not, and what to use instead). The generic `vlft sft` refusals (cli/parsing.py) apply as well.
MEGATRON_REFUSED: dict[str, tuple[frozenset[str], str]] = {
    "moe_permute_fusion": (_FALSE | _TRUE, ""),  # a speed switch: tokens are permuted by torch either way
    "moe_shared_expert_overlap": (_FALSE | _TRUE, ""),  # a speed switch: the shared expert runs in line
    "cross_entropy_loss_fusion": (_FALSE | _TRUE, ""),  # a speed switch: the loss is Megatron-Core's vocab CE
    "attention_backend": (frozenset({"flash", "auto", "fused", "unfused", "local"}),
                          "attention is vlft's packed attention (a varlen kernel on GPU)"),
    "optimizer_cpu_offload": (_FALSE, _OFFLOAD),
    "optimizer_offload_fraction": (_NONE, _OFFLOAD),
    "use_precision_aware_optimizer": (_FALSE, _OFFLOAD),
    "overlap_grad_reduce": (_FALSE | _TRUE, ""),
    "overlap_param_gather": (_FALSE | _TRUE, ""),
    "save_safetensors": (_FALSE, "write HF files from a checkpoint with vlft export --mcore_model DIR --to_hf true"),
    "context_parallel_size": (frozenset({"1"}), "context parallelism needs TransformerEngine's attention; long rows "
                                                "fit with --recompute_granularity full"),
    "tp_comm_overlap": (_FALSE, _LOCAL_SPEC),
    "fp8_format": (_NONE, _LOCAL_SPEC),
    "fp8_recipe": (_NONE, _LOCAL_SPEC),
}
# `vlft sft` (swift sft) flags that Megatron-SWIFT names differently.
_RENAMED = {"learning_rate": "lr", "per_device_train_batch_size": "micro_batch_size",
            "gradient_accumulation_steps": "global_batch_size", "num_train_epochs": "max_epochs",
            "max_steps": "train_iters", "output_dir": "save", "save_steps": "save_interval",
            "eval_steps": "eval_interval", "logging_steps": "log_interval", "warmup_ratio": "lr_warmup_fraction",
            "warmup_steps": "lr_warmup_iters", "max_grad_norm": "clip_grad", "adam_epsilon": "adam_eps",
            "resume_from_checkpoint": "load", "dataloader_num_workers": "num_workers"}
MEGATRON_REFUSED.update({old: (_NONE, f"vlft megatron sft takes Megatron-SWIFT's --{new}")
                         for old, new in _RENAMED.items()})
MEGATRON_REFUSED["deepspeed"] = (_NONE, "Megatron-Core shards the model itself: --tensor_model_parallel_size, "
                                        "--expert_model_parallel_size, --use_distributed_optimizer")


@dataclass
class MegatronSftArguments(ModelArguments, TemplateArguments, DatasetArguments, PackingLengthArguments):
    """`vlft megatron sft`: training on Megatron-Core (Megatron-SWIFT's `megatron sft` arguments) with the data
    pipeline of `vlft sft`."""

    refused: ClassVar[dict[str, tuple[frozenset[str], str]]] = MEGATRON_REFUSED

    load: str | None = field(default=None, metadata={
        "help": "a Megatron-Core checkpoint (vlft export --to_mcore, or a vlft megatron sft run) to start from; "
                "or --model to read an HF model's files directly"})
    save: str = field(default="megatron_output", metadata={"help": "runs go to SAVE/v{N}-{time}"})
    add_version: bool = field(default=True, metadata={"help": "put the run in a new v{N}-{time} subdir"})
    finetune: bool = field(default=False, metadata={
        "help": "take only the weights of --load (iteration, optimizer and data position start afresh)"})
    no_load_optim: bool = field(default=False, metadata={"help": "resume without the optimizer's state"})
    no_load_rng: bool = field(default=False, metadata={"help": "resume without the random state"})
    train_type: Literal["full", "lora"] = field(default="full", metadata={"help": "full or lora"})
    torch_dtype: Literal["bfloat16", "float16", "float32"] | None = field(
        default=None, metadata={"help": "weights dtype (default: bfloat16 on GPU, float32 on CPU)"})
    tensor_model_parallel_size: int = field(default=1, metadata={"help": "tensor-parallel ranks"})
    pipeline_model_parallel_size: int = field(default=1, metadata={"help": "pipeline stages"})
    expert_model_parallel_size: int = field(default=1, metadata={"help": "expert-parallel ranks (MoE)"})
    expert_tensor_parallel_size: int | None = field(default=None, metadata={
        "help": "tensor-parallel ranks inside each expert (default 1)"})
    sequence_parallel: bool = field(default=False, metadata={"help": "sequence parallelism (with TP)"})
    use_distributed_optimizer: bool = field(default=True, metadata={
        "help": "shard the optimizer's state over data-parallel ranks"})
    micro_batch_size: int = field(default=1, metadata={"help": "rows (packed or single samples) per micro-batch"})
    global_batch_size: int = field(default=16, metadata={"help": "rows per optimizer step, over all data-parallel "
                                                                 "ranks"})
    packing: bool = field(default=False, metadata={"help": "pack samples into rows of --packing_length (default "
                                                         "--max_length)"})
    padding_free: bool = field(default=True, metadata={
        "help": "a micro-batch's samples concatenated into one row (always on: Megatron-Core takes packed rows)"})
    recompute_granularity: Literal["full", "selective", "none"] = field(default="selective", metadata={
        "help": "recompute activations in the backward: full layers, selective (core attention), or none"})
    recompute_method: Literal["uniform", "block"] | None = field(default=None, metadata={
        "help": "with --recompute_granularity full: uniform (groups of --recompute_num_layers) or block"})
    recompute_num_layers: int | None = field(default=None, metadata={"help": "layers per recompute group/block"})
    moe_grouped_gemm: bool = field(default=True, metadata={
        "help": "MoE experts as grouped GEMMs (torch's grouped_mm on GPUs, no TransformerEngine needed); false: "
                "one by one (Megatron-Core's SequentialMLP)"})
    moe_aux_loss_coeff: float = field(default=0.0, metadata={"help": "MoE load-balancing loss weight"})
    moe_expert_capacity_factor: float | None = field(default=None, metadata={
        "help": "MoE: tokens an expert takes, as a multiple of an even share (default: no limit, no dropping)"})
    moe_token_dispatcher_type: Literal["allgather", "alltoall"] = field(default="allgather", metadata={
        "help": "how MoE tokens reach expert-parallel ranks (alltoall: on GPUs only)"})
    lora_rank: int = field(default=8, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha"})
    lora_dropout: float | None = field(default=None, metadata={
        "help": "LoRA dropout (default 0.05; 0 when LoRA reaches MoE experts, as in vlft sft)"})
    use_rslora: bool = field(default=False, metadata={"help": "rank-stabilised LoRA"})
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"], metadata={
        "help": "all-linear (every projection of the language model, MoE experts included), or projection names "
                "(q_proj k_proj v_proj o_proj gate_proj up_proj down_proj experts)"})
    adapters: list[str] = field(default_factory=list, metadata={
        "help": "a PEFT LoRA adapter (a vlft sft or vlft megatron sft checkpoint) to start LoRA training from"})
    freeze_router: bool = field(default=True, metadata={"help": "MoE: keep the routers frozen (as vlft sft)"})
    freeze_vit: bool = field(default=True, metadata={"help": "freeze the vision tower"})
    freeze_aligner: bool = field(default=True, metadata={"help": "freeze the aligner (merger, deepstack mergers)"})
    freeze_llm: bool = field(default=False, metadata={"help": "freeze the language model"})
    lr: float | None = field(default=None, metadata={"help": "peak learning rate (default 1e-5 full, 1e-4 lora)"})
    min_lr: float = field(default=0.0, metadata={"help": "learning rate at the end of the decay"})
    lr_decay_style: Literal["cosine", "linear", "constant"] = field(default="cosine", metadata={
        "help": "learning-rate decay after the warmup"})
    lr_warmup_iters: int = field(default=0, metadata={"help": "warmup steps"})
    lr_warmup_fraction: float | None = field(default=None, metadata={"help": "warmup as a share of the steps"})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay (not on norms and biases)"})
    calculate_per_token_loss: bool = field(default=True, metadata={
        "help": "the step's loss is the mean over all its trained tokens; false: the mean of each micro-batch's "
                "mean (what vlft sft trains with under gradient accumulation or several GPUs)"})
    clip_grad: float = field(default=1.0, metadata={"help": "gradient norm clipping (0: off)"})
    adam_beta1: float = field(default=0.9, metadata={"help": "Adam beta1"})
    adam_beta2: float = field(default=0.95, metadata={"help": "Adam beta2"})
    adam_eps: float = field(default=1e-8, metadata={"help": "Adam epsilon"})
    train_iters: int | None = field(default=None, metadata={"help": "optimizer steps (else from --max_epochs)"})
    max_epochs: int | None = field(default=None, metadata={"help": "epochs over the data (default 1 without "
                                                                   "--train_iters)"})
    log_interval: int = field(default=5, metadata={"help": "log every N steps (the last is always logged)"})
    save_interval: int | None = field(default=None, metadata={"help": "save every N steps (the last is always "
                                                                      "saved)"})
    eval_interval: int | None = field(default=None, metadata={"help": "evaluate every N steps (default: "
                                                                      "--save_interval)"})
    eval_iters: int = field(default=-1, metadata={"help": "validation micro-batches per evaluation (-1: all)"})
    no_save_optim: bool = field(default=False, metadata={"help": "save weights without the optimizer's state"})
    no_save_rng: bool = field(default=False, metadata={"help": "save without the random state"})
    num_workers: int = field(default=1, metadata={"help": "data-loader worker processes"})

    def problems(self) -> list[str]:
        problems = TemplateArguments.problems(self) + DatasetArguments.problems(self)
        if not self.model and not self.load:
            problems.append("--load (a Megatron-Core checkpoint) or --model (an HF model) is required")
        if self.model and self.load:
            problems.append("--model and --load: give one (--load starts from a Megatron-Core checkpoint)")
        if not self.dataset:
            problems.append("--dataset is required")
        problems += self.packing_length_problems()
        if self.new_special_tokens:
            problems.append("--new_special_tokens: Megatron-Core checkpoints keep the base model's tokenizer files, so "
                            "the tokens would not reach the converted model; add them in vlft sft")
        if self.packing and self.max_length is None:
            problems.append("--packing true needs --max_length (the row length)")
        if not self.padding_free:
            problems.append("--padding_free false: Megatron-Core takes packed rows only (samples are concatenated, "
                            "each attending only to itself)")
        if self.expert_tensor_parallel_size is None:
            self.expert_tensor_parallel_size = 1
        if self.lr is None:
            self.lr = 1e-4 if self.train_type == "lora" else 1e-5
        if self.train_type == "lora" and not (self.freeze_vit and self.freeze_aligner):
            problems.append("--train_type lora adapts the language model only in vlft megatron sft: keep "
                            "--freeze_vit and --freeze_aligner true")
        if self.train_type == "lora" and self.freeze_llm:
            problems.append("--train_type lora with --freeze_llm true: nothing to adapt")
        if self.adapters and self.train_type != "lora":
            problems.append("--adapters starts LoRA training from an adapter: give --train_type lora")
        if self.eval_interval is None:
            self.eval_interval = self.save_interval
        if self.lr_warmup_fraction is not None and not 0 <= self.lr_warmup_fraction < 1:
            problems.append(f"--lr_warmup_fraction must be in [0, 1), got {self.lr_warmup_fraction}")
        if self.lr_warmup_fraction is not None and self.lr_warmup_iters:
            problems.append("--lr_warmup_fraction and --lr_warmup_iters: give one of them")
        if self.min_lr > self.lr:
            problems.append(f"--min_lr {self.min_lr} is above --lr {self.lr}")
        if self.train_iters is None and self.max_epochs is None:
            self.max_epochs = 1
        if self.torch_dtype == "float16":
            problems.append("--torch_dtype float16 needs loss scaling, which vlft megatron sft does not run: use "
                            "bfloat16")
        if self.sequence_parallel:
            problems.append("--sequence_parallel true needs TransformerEngine's norms (Megatron-Core's local spec "
                            "refuses it); MoE layers train with --tensor_model_parallel_size 1 and "
                            "--expert_model_parallel_size N")
        if self.recompute_granularity != "full" and (self.recompute_method or self.recompute_num_layers):
            problems.append("--recompute_method and --recompute_num_layers go with --recompute_granularity full")
        if self.recompute_granularity == "full" and self.recompute_method is None:
            self.recompute_method, self.recompute_num_layers = "uniform", self.recompute_num_layers or 1
        if self.freeze_vit and self.freeze_aligner and self.freeze_llm:
            problems.append("--freeze_vit, --freeze_aligner and --freeze_llm all true: nothing to train")
        return problems + not_positive(self, (
            "tensor_model_parallel_size", "pipeline_model_parallel_size", "expert_model_parallel_size",
            "expert_tensor_parallel_size", "micro_batch_size", "global_batch_size", "train_iters", "max_epochs",
            "log_interval", "save_interval", "eval_interval", "recompute_num_layers", "lr", "lora_rank"))

    @property
    def sizes(self) -> ParallelSizes:
        return ParallelSizes(self.tensor_model_parallel_size, self.pipeline_model_parallel_size,
                             self.expert_model_parallel_size, self.expert_tensor_parallel_size)
