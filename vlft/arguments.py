"""Typed, inert arguments shared by the commands (ms-swift's names). Constructing one validates and
does nothing else: no downloads, no directories, no environment writes."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from vlft.data.new_tokens import read_new_special_tokens
from vlft.data.self_cognition import ModelIdentity, identity_problems
from vlft.data.loss_scale import parse_loss_scale
from vlft.errors import ArgumentProblems, VlftError, collected
from vlft.families import FAMILIES, get_family
from vlft.infer.adapters import adapter_specs
from vlft.infer.protocol import MAX_TOP_LOGPROBS, beam_problems


def public_args(args) -> dict:
    """The arguments as a JSON-able dict, secrets (hub tokens) left out."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(args) if not f.metadata.get("secret")}


def system_prompt(system: str | None) -> str | None:
    """--system as ms-swift reads it: a path ending in .txt is the prompt's file, and `\\n` typed on a command
    line is a line break."""
    if system is None:
        return None
    if system.endswith(".txt"):
        path = Path(system).expanduser()
        if not path.is_file():
            raise VlftError(f"--system {system}: no such file (a value ending in .txt is read as the prompt's file)")
        return path.read_text(encoding="utf-8")
    return system.replace("\\n", "\n")


def not_positive(args: object, names: tuple[str, ...]) -> list[str]:
    """A problem for each of the named flags whose value is set and not positive."""
    values = ((name, getattr(args, name)) for name in names)
    return [f"--{name} must be positive, got {value}" for name, value in values if value is not None and value <= 0]


class CheckedArguments:
    """Arguments checked when constructed: `problems()` (the class's checks with its bases', normalising values as
    it goes) runs in __post_init__, and any problems raise one ArgumentProblems that lists them all."""

    def __post_init__(self):
        problems = self.problems()
        if problems:
            raise ArgumentProblems(problems, self)

    def problems(self) -> list[str]:
        return []


@dataclass
class ModelArguments(CheckedArguments):
    """Which model: a local dir, `vlft/tiny-*`, or a hub id (ModelScope, or the HF Hub with --use_hf)."""

    model: str | None = field(default=None, metadata={"help": "model dir, hub id, or vlft/tiny-qwen3-vl"})
    model_dir: str | None = field(default=None, metadata={
        "help": "the local dir --model resolved to; `vlft sft` sets it for its torchrun workers, so that they neither "
                "resolve --model again nor record a cache path in place of the user's --model"})
    model_type: str | None = field(default=None, metadata={"help": "family, overriding config.json's model_type"})
    template: str | None = field(default=None, metadata={"help": "template name (default: the family's)"})
    model_revision: str | None = field(default=None, metadata={"help": "hub revision to download"})
    use_hf: bool = field(default=False, metadata={"help": "download from the HF Hub instead of ModelScope",
                                                   "env": "USE_HF"})
    hub_token: str | None = field(default=None, repr=False, metadata={"help": "hub token (never written to disk)",
                                                                      "secret": True})
    cache_dir: str | None = field(default=None, metadata={"help": "vlft's cache (tiny models, encodings)",
                                                          "env": "VLFT_CACHE_HOME"})
    model_kwargs: dict | None = field(default=None, metadata={
        "help": "environment settings as JSON, as ms-swift takes them (e.g. '{\"FPS_MAX_FRAMES\": 16}'), each one a "
                "flag's [env: ...]; a flag on the command line wins over them, they win over the environment"})


@dataclass
class TemplateArguments(CheckedArguments):
    """How samples are rendered and encoded: system prompt, lengths, labels and media sizes."""

    system: str | None = field(default=None, metadata={
        "help": "system prompt for samples without one; a path ending in .txt is read (as ms-swift does), and a "
                "typed \\n is a line break"})
    max_length: int | None = field(default=None, metadata={"help": "max tokens per sample"})
    truncation_strategy: Literal["delete", "left", "right", "error"] = field(
        default="delete", metadata={"help": "over max_length: drop and report (delete), cut (left/right), or fail"})
    loss_scale: str = field(default="default", metadata={
        "help": "trained tokens: default (every assistant turn), last_round, all; +ignore_empty_think (e.g. "
                "last_round+ignore_empty_think) leaves an empty <think></think> block untrained; ms-swift's "
                "weightings hermes, react, qwen, alpha_umi, ignore_think_prefix (e.g. hermes: tool calls count twice)"})
    enable_thinking: bool | None = field(default=None, metadata={
        "help": "Qwen3.5 / Qwen3.6: render with thinking on or off (default: the checkpoint template's default)"})
    preserve_thinking: bool | None = field(default=None, metadata={
        "help": "Qwen3.5 / Qwen3.6: keep the thinking of assistant turns before the last user query (default: "
                "dropped, as the chat template writes them; ms-swift keeps them in training unless --loss_scale "
                "last_round)"})
    disable_ignore_empty_think: bool = field(default=False, metadata={
        "help": "Qwen3.5: train empty <think></think> blocks too (by default they are not, as in ms-swift)"})
    train_turn_separator: bool = field(default=True, metadata={
        "help": "train the \\n after each trained assistant <|im_end|>, as ms-swift and Qwen's fine-tuning code do"})
    split_special_tokens: bool = field(default=False, metadata={
        "help": "encode control tokens typed in messages (<|im_start|>, <|im_end|>, ...) as plain text; by default "
                "such a line is an error"})
    agent_template: str | None = field(default=None, metadata={
        "help": "ms-swift's tool format name; vlft writes the family's own (hermes: Qwen2-VL, Qwen2.5-VL, Qwen3-VL; "
                "qwen3_5: Qwen3.5)"})
    new_special_tokens: list[str] = field(default_factory=list, metadata={
        "help": "tokens added to the tokenizer as special tokens (one id each), or .txt files of them"})
    image_max_token_num: int | None = field(default=None, metadata={"env": "IMAGE_MAX_TOKEN_NUM",
                                                                    "help": "max vision tokens per image"})
    image_min_token_num: int | None = field(default=None, metadata={"env": "IMAGE_MIN_TOKEN_NUM",
                                                                    "help": "min vision tokens per image"})
    max_pixels: int | None = field(default=None, metadata={"env": "MAX_PIXELS", "help": "max pixels per image"})
    min_pixels: int | None = field(default=None, metadata={"env": "MIN_PIXELS", "help": "min pixels per image"})
    video_max_token_num: int | None = field(default=None, metadata={"env": "VIDEO_MAX_TOKEN_NUM",
                                                                    "help": "max vision tokens per frame pair"})
    video_min_token_num: int | None = field(default=None, metadata={"env": "VIDEO_MIN_TOKEN_NUM",
                                                                    "help": "min vision tokens per frame pair"})
    video_max_pixels: int | None = field(default=None, metadata={"env": "VIDEO_MAX_PIXELS",
                                                                 "help": "max pixels per video frame"})
    video_min_pixels: int | None = field(default=None, metadata={"env": "VIDEO_MIN_PIXELS",
                                                                 "help": "min pixels per video frame"})
    video_total_pixels: int | None = field(default=None, metadata={"env": "VIDEO_TOTAL_PIXELS",
                                                                   "help": "max pixels over all frames"})
    fps: float = field(default=2.0, metadata={"env": "FPS", "help": "video frames sampled per second"})
    fps_min_frames: int = field(default=4, metadata={"env": "FPS_MIN_FRAMES", "help": "min frames per video"})
    fps_max_frames: int = field(default=768, metadata={"env": "FPS_MAX_FRAMES", "help": "max frames per video"})
    # = vlft.data.media.MAX_IMAGE_PIXELS (a literal here so that parsing arguments does not import PIL)
    max_image_pixels: int = field(default=178_956_970, metadata={
        "help": "images (and video frames) over this many pixels are refused before decoding"})

    def problems(self) -> list[str]:
        problems: list[str] = []
        self.system = collected(problems, system_prompt, self.system)
        # .txt files read once: args.json records the tokens themselves (infer reads them back from there)
        self.new_special_tokens = list(collected(problems, read_new_special_tokens, self.new_special_tokens) or [])
        collected(problems, parse_loss_scale, self.loss_scale)  # names the accepted forms
        return problems + not_positive(self, (
            "max_length", "image_max_token_num", "image_min_token_num", "max_pixels", "min_pixels",
            "video_max_token_num", "video_min_token_num", "video_max_pixels", "video_min_pixels", "video_total_pixels",
            "fps", "fps_min_frames", "fps_max_frames", "max_image_pixels"))


@dataclass
class SelfCognitionArguments(CheckedArguments):
    """ms-swift's names for swift/self-cognition's {{NAME}} and {{AUTHOR}} (vlft/data/self_cognition.py)."""

    model_name: list[str] | None = field(default=None, metadata={
        "help": "self-cognition data (swift/self-cognition): the model's name, ZH [EN], for {{NAME}}"})
    model_author: list[str] | None = field(default=None, metadata={
        "help": "self-cognition data: the model's author, ZH [EN], for {{AUTHOR}}"})

    @property
    def identity(self) -> ModelIdentity:
        return ModelIdentity.from_args(self.model_name, self.model_author)


@dataclass
class DatasetArguments(SelfCognitionArguments):
    """Which data: local files or hub ids (`ID[:SUBSET][#N]`), the split, and the encoding cache."""

    dataset: list[str] = field(default_factory=list, metadata={"help": "files, folders or ID[:SUBSET][#N]"})
    val_dataset: list[str] = field(default_factory=list, metadata={"help": "validation data, same forms"})
    split_dataset_ratio: float = field(default=0.0, metadata={"help": "share of --dataset held out for eval"})
    columns: dict[str, str] | str | None = field(default=None, metadata={
        "help": "JSON map of column renames, or a known dataset id whose mapping applies"})
    dataset_dir: str | None = field(default=None, metadata={
        "help": "LLaMA-Factory dataset dir: --dataset names defined in its dataset_info.json"})
    dataset_num_proc: int = field(default=1, metadata={"help": "processes that encode samples"})
    load_from_cache_file: bool = field(default=True, metadata={"help": "reuse encodings cached by a previous run"})
    seed: int = field(default=42, metadata={"help": "seed for #N sampling, the split and shuffling"})
    strict: bool = field(default=True, metadata={
        "help": "a bad line stops the run; false: bad lines are skipped and listed at the end"})

    def problems(self) -> list[str]:
        problems = not_positive(self, ("dataset_num_proc",)) + identity_problems(self.model_name, self.model_author)
        if not 0.0 <= self.split_dataset_ratio < 1.0:
            problems.append(f"--split_dataset_ratio must be in [0, 1), got {self.split_dataset_ratio}")
        return problems


@dataclass
class PackingLengthArguments(CheckedArguments):
    """ms-swift's --packing_length: rows longer than the samples (each still cut at --max_length)."""

    packing_length: int | None = field(default=None, metadata={
        "help": "tokens per packed row (default --max_length, which still cuts each sample)"})

    @property
    def row_length(self) -> int | None:
        """The length of a packed row."""
        return self.packing_length or self.max_length

    def packing_length_problems(self) -> list[str]:
        """Run from the command's __post_init__ before --packing's own checks: an unset --max_length becomes
        --packing_length (no sample can be longer than a row)."""
        if self.packing_length is None:
            return []
        if not self.packing:
            return [f"--packing_length {self.packing_length} is the length of packed rows: add --packing true"]
        if self.packing_length < 1:
            return [f"--packing_length must be positive, got {self.packing_length}"]
        if self.max_length is None:
            self.max_length = self.packing_length
        if self.packing_length < self.max_length:
            return [f"--packing_length {self.packing_length} is below --max_length {self.max_length}: a sample of "
                    "--max_length tokens would not fit in a row"]
        return []


@dataclass
class DataCheckArguments(ModelArguments, TemplateArguments, DatasetArguments):
    """`vlft data check`: validate every line and print a report."""

    max_errors: int = field(default=50, metadata={"help": "errors listed in full (all are counted)"})

    def problems(self) -> list[str]:
        problems = TemplateArguments.problems(self) + DatasetArguments.problems(self)
        if not self.model:
            problems.append("--model is required")
        if not self.dataset:
            problems.append("--dataset is required")
        return problems


@dataclass
class DataEncodeArguments(DataCheckArguments):
    """`vlft data encode`: write each line's encoding as one JSON object."""

    output: str | None = field(default=None, metadata={"help": "output .jsonl path"})

    def problems(self) -> list[str]:
        return super().problems() + ([] if self.output else ["--output is required"])


@dataclass
class TinyModelArguments(CheckedArguments):
    """`vlft model tiny`: write a built-in tiny model dir."""

    family: str = field(default="qwen3_vl", metadata={"help": "model family: " + ", ".join(FAMILIES)})
    output: str | None = field(default=None, metadata={"help": "output dir"})
    seed: int = field(default=0, metadata={"help": "seed of the random weights"})

    def problems(self) -> list[str]:
        problems = [] if self.output else ["--output is required"]
        collected(problems, get_family, self.family)  # an unknown one names the supported families
        return problems


@dataclass
class SftArguments(ModelArguments, TemplateArguments, DatasetArguments, PackingLengthArguments):
    """`vlft sft`: LoRA or full fine-tuning (ms-swift's `swift sft` arguments)."""

    train_type: Literal["lora", "full"] = field(default="lora", metadata={"help": "lora or full fine-tuning"})
    tuner_type: Literal["lora", "full"] | None = field(default=None, metadata={"help": "alias of --train_type"})
    torch_dtype: Literal["bfloat16", "float16", "float32"] | None = field(
        default=None, metadata={"help": "weights dtype (default: bfloat16 on GPU, float32 on CPU)"})
    bf16: bool | None = field(default=None, metadata={
        "help": "ms-swift's mixed-precision flag: vlft computes in the weights' dtype, so true means --torch_dtype "
                "bfloat16 (set when not given) and false needs another --torch_dtype"})
    fp16: bool | None = field(default=None, metadata={
        "help": "as --bf16, for --torch_dtype float16"})
    attn_impl: str | None = field(default=None, metadata={
        "help": "attention: varlen (torch's FlashAttention, CUDA default), flash_attn, sdpa (CPU default), eager"})
    padding_free: bool = field(default=False, metadata={"help": "concatenate a batch's samples into one row"})
    packing: bool = field(default=False, metadata={"help": "pack samples into rows of --packing_length (default "
                                                           "--max_length; implies --padding_free)"})
    sequence_parallel_size: int = field(default=1, metadata={
        "help": "Ulysses sequence parallelism: each packed row split along the sequence over N processes (needs "
                "--packing or --padding_free, and NPROC_PER_NODE x NNODES a multiple of N)"})
    num_train_epochs: float = field(default=3.0, metadata={"help": "epochs"})
    max_steps: int = field(default=-1, metadata={"help": "optimizer steps (overrides epochs when > 0)"})
    per_device_train_batch_size: int = field(default=1, metadata={"help": "samples (or packed rows) per step"})
    per_device_eval_batch_size: int = field(default=1, metadata={"help": "eval batch size"})
    gradient_accumulation_steps: int | None = field(default=None, metadata={"help": "micro-batches per step "
                                                                                    "(default 1)"})
    learning_rate: float | None = field(default=None, metadata={"help": "default 1e-4 for lora, 1e-5 for full"})
    vit_lr: float | None = field(default=None, metadata={"help": "learning rate of the vision tower"})
    aligner_lr: float | None = field(default=None, metadata={"help": "learning rate of the aligner (merger)"})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping"})
    warmup_ratio: float = field(default=0.0, metadata={"help": "share of steps warming up the lr"})
    warmup_steps: float = field(default=0.0, metadata={
        "help": "steps warming up the lr (below 1: a share of the steps); not with --warmup_ratio"})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "transformers scheduler name"})
    lr_scheduler_kwargs: dict | None = field(default=None, metadata={
        "help": "JSON of the scheduler's own arguments, e.g. '{\"min_lr\": 1e-6}' with cosine_with_min_lr"})
    optim: str | None = field(default=None, metadata={
        "help": "transformers optimizer name (default: transformers', adamw_torch_fused)"})
    adam_beta1: float = field(default=0.9, metadata={"help": "Adam beta1"})
    adam_beta2: float = field(default=0.999, metadata={"help": "Adam beta2"})
    adam_epsilon: float = field(default=1e-8, metadata={"help": "Adam epsilon"})
    lora_rank: int = field(default=8, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha"})
    lora_dropout: float | None = field(default=None, metadata={
        "help": "LoRA dropout (default 0.05; 0 when LoRA reaches MoE experts, which take no dropout)"})
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"], metadata={
        "help": "all-linear, module names, or one regex"})
    target_regex: str | None = field(default=None, metadata={
        "help": "regex of the module names LoRA adapts (PEFT's full match; wins over --target_modules)"})
    modules_to_save: list[str] = field(default_factory=list, metadata={"help": "modules trained fully with LoRA"})
    use_dora: bool = field(default=False, metadata={"help": "DoRA"})
    use_rslora: bool = field(default=False, metadata={"help": "rank-stabilised LoRA"})
    lora_dtype: Literal["bfloat16", "float16", "float32"] | None = field(default=None, metadata={
        "help": "dtype of the LoRA parameters (default: PEFT's, float32 beside half-precision weights)"})
    neftune_noise_alpha: float | None = field(default=None, metadata={
        "help": "NEFTune: uniform noise of this scale added to the input embeddings while training (transformers')"})
    quant_method: str | None = field(default=None, metadata={
        "help": "bnb: QLoRA, LoRA on the LLM's linears loaded as bitsandbytes 4-bit weights (with --quant_bits 4; "
                "the ViT, aligner and lm_head stay unquantized; docs/qlora.md)"})
    quant_bits: int | None = field(default=None, metadata={"help": "4 (with --quant_method bnb)"})
    bnb_4bit_quant_type: Literal["nf4", "fp4"] = field(default="nf4", metadata={"help": "4-bit data type"})
    bnb_4bit_use_double_quant: bool = field(default=True, metadata={"help": "quantize the 4-bit scales too"})
    bnb_4bit_compute_dtype: Literal["bfloat16", "float16", "float32"] | None = field(default=None, metadata={
        "help": "dtype of the 4-bit matmuls (default: bfloat16 with bfloat16 weights, else float32)"})
    freeze_vit: bool = field(default=True, metadata={"help": "freeze the vision tower"})
    freeze_aligner: bool = field(default=True, metadata={"help": "freeze the aligner (merger, deepstack mergers)"})
    freeze_llm: bool = field(default=False, metadata={"help": "freeze the language model"})
    freeze_router: bool = field(default=True, metadata={"help": "MoE: keep the routers (mlp.gate) frozen"})
    router_aux_loss_coef: float | None = field(default=None, metadata={
        "help": "MoE: weight of the load-balancing loss added to the loss (default: off, as the model config)"})
    gradient_checkpointing: bool | Literal["auto"] = field(default="auto", metadata={
        "help": "recompute LLM activations: true, false, or auto (on one CUDA process without DeepSpeed: the "
                "fewest decoder layers that fit the GPU's memory, from a probe of the longest row; else all)"})
    chunked_loss: bool | None = field(default=None, metadata={
        "help": "cross-entropy from the last hidden states in chunks: no full-row float32 logits (longer rows "
                "fit); not with ZeRO-3 or an MoE aux loss (default: on CUDA where it applies)"})
    torch_compile: bool | None = field(default=None, metadata={
        "help": "compile the LLM's decoder layers with torch.compile, one graph for all (not with ZeRO-3; "
                "default: on CUDA where every layer compiles whole)"})
    torch_compile_mode: Literal["default", "reduce-overhead"] | None = field(default=None, metadata={
        "help": "torch.compile's mode for the decoder layers (implies --torch_compile true); reduce-overhead "
                "replays them as CUDA graphs over rows padded to --max_length x --per_device_train_batch_size "
                "(needs --packing true; default: reduce-overhead where torch.compile is on by default, rows are "
                "packed and the attention is the varlen kernel)"})
    vit_gradient_checkpointing: bool | None = field(default=None, metadata={
        "help": "recompute ViT activations (default: as --gradient_checkpointing)"})
    eval_steps: float | None = field(default=None, metadata={
        "help": "evaluate every N steps, or below 1 a share of the run's steps (default: save_steps)"})
    save_steps: float = field(default=500, metadata={
        "help": "checkpoint every N steps, or below 1 a share of the run's steps (0.25: four times)"})
    save_strategy: Literal["steps", "epoch", "best", "no"] = field(default="steps", metadata={
        "help": "checkpoint every --save_steps, every epoch, at each best eval loss, or only the last step (no); "
                "the last step is always saved"})
    eval_strategy: Literal["steps", "epoch", "no"] | None = field(default=None, metadata={
        "help": "evaluate every --eval_steps or every epoch (default: as --save_strategy; no without eval data; "
                "no also holds out no --split_dataset_ratio)"})
    save_total_limit: int | None = field(default=None, metadata={"help": "checkpoints kept (best and last)"})
    create_checkpoint_symlink: bool = field(default=False, metadata={
        "help": "links `last` and `best` (the lowest eval loss) in the run dir to those checkpoints"})
    save_only_model: bool = field(default=False, metadata={
        "help": "checkpoints without the optimizer, scheduler and RNG states (smaller; they cannot be resumed)"})
    eval_on_start: bool = field(default=False, metadata={"help": "evaluate once before the first step"})
    logging_steps: float = field(default=5, metadata={
        "help": "log every N steps, or below 1 a share of the run's steps"})
    logging_first_step: bool = field(default=False, metadata={"help": "also log the first step"})
    logging_nan_inf_filter: bool = field(default=False, metadata={
        "help": "log the running mean in place of a NaN/inf step loss (transformers' filter; its check reads "
                "every step's loss back to the host, a stall in a GPU step bound by the host)"})
    output_dir: str = field(default="output", metadata={"help": "runs go to OUTPUT_DIR/v{N}-{time}"})
    logging_dir: str | None = field(default=None, metadata={
        "help": "TensorBoard's event files (default: the run dir's runs/)"})
    add_version: bool = field(default=True, metadata={"help": "put the run in a new v{N}-{time} subdir"})
    deepspeed: str | None = field(default=None, metadata={
        "help": "zero0, zero1, zero2, zero2_offload, zero3, zero3_offload, or a JSON path"})
    fsdp: str | None = field(default=None, metadata={
        "help": "PyTorch FSDP2 (not with --deepspeed): fsdp2, FSDP options (full_shard or shard_grad_op, offload), or "
                "a JSON path of ms-swift's shape {\"fsdp\": ..., \"fsdp_config\": {...}}"})
    fsdp_config: dict | str | None = field(default=None, metadata={
        "help": "with --fsdp: transformers' fsdp_config entries (a JSON object or path), over the --fsdp config's"})
    ddp_timeout: int = field(default=18_000_000, metadata={
        "help": "seconds ranks wait for each other (ranks wait while rank 0 encodes the data)"})
    ddp_find_unused_parameters: bool | None = field(default=None, metadata={
        "help": "DDP searches each step for parameters without a gradient (default: transformers' choice)"})
    torch_empty_cache_steps: int | None = field(default=None, metadata={
        "help": "empty the CUDA cache every N steps (less reserved memory, a slower step)"})
    dataloader_num_workers: int = field(default=0, metadata={"help": "data loader worker processes"})
    data_seed: int | None = field(default=None, metadata={"help": "seed of the order batches are drawn in "
                                                                 "(default: --seed)"})
    resume_from_checkpoint: str | None = field(default=None, metadata={"help": "checkpoint dir to resume"})
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"], metadata={"help": "tensorboard or none"})

    def problems(self) -> list[str]:
        problems = TemplateArguments.problems(self) + DatasetArguments.problems(self)
        if self.tuner_type is not None:
            self.train_type = self.tuner_type
        if not self.model:
            problems.append("--model is required")
        if not self.dataset:
            problems.append("--dataset is required")
        problems += self.packing_length_problems()
        if self.packing:
            self.padding_free = True
            if self.max_length is None:
                problems.append("--packing true needs --max_length (the row length)")
        problems += self._mixed_precision_problems()
        if self.torch_compile_mode is not None:
            self.torch_compile = True
        if self.torch_compile_mode == "reduce-overhead":
            problems += self._cuda_graph_batch_problems()
        if self.vit_gradient_checkpointing is None:  # the memory plan covers the LLM's layers
            self.vit_gradient_checkpointing = self.gradient_checkpointing in (True, "auto")
        if self.gradient_accumulation_steps is None:
            self.gradient_accumulation_steps = 1
        if self.learning_rate is None:
            self.learning_rate = 1e-4 if self.train_type == "lora" else 1e-5
        if self.eval_steps is None:
            self.eval_steps = self.save_steps
        problems += self._trainer_flag_problems()
        problems += self._quantization_problems()
        problems += self._step_interval_problems()
        problems += not_positive(self, ("per_device_train_batch_size", "per_device_eval_batch_size",
                                        "gradient_accumulation_steps", "save_steps", "eval_steps", "logging_steps",
                                        "lora_rank", "learning_rate", "sequence_parallel_size",
                                        "torch_empty_cache_steps"))
        if self.neftune_noise_alpha is not None and self.neftune_noise_alpha < 0:
            problems.append(f"--neftune_noise_alpha must be >= 0, got {self.neftune_noise_alpha}")
        problems += self._lora_dtype_problems()
        if self.router_aux_loss_coef is not None and self.router_aux_loss_coef < 0:
            problems.append(f"--router_aux_loss_coef must be >= 0, got {self.router_aux_loss_coef}")
        if self.freeze_vit and self.freeze_aligner and self.freeze_llm and self.train_type == "full":
            problems.append("--freeze_vit, --freeze_aligner and --freeze_llm all true: nothing to train")
        return problems

    def _step_interval_problems(self) -> list[str]:
        """--save_steps / --eval_steps / --logging_steps as transformers reads them (ms-swift passes them on): a
        whole number of steps, or a share of the run's steps below 1; whole numbers are kept as ints."""
        problems = []
        for name in ("save_steps", "eval_steps", "logging_steps"):
            value = getattr(self, name)
            if value is None or value < 1:
                continue
            if value != int(value):
                problems.append(f"--{name} {value:g}: a whole number of steps, or below 1 a share of the run's "
                                "steps (0.1: every tenth of them)")
            else:
                setattr(self, name, int(value))
        return problems

    def _trainer_flag_problems(self) -> list[str]:
        """ms-swift's TrainingArguments flags: warmup, eval and save strategies, scheduler kwargs, LoRA regex."""
        problems = []
        if self.deepspeed and self.fsdp:
            problems.append(f"--deepspeed {self.deepspeed} and --fsdp {self.fsdp}: choose one way of sharding the "
                            "model (ZeRO-3 or FSDP2)")
        if self.warmup_ratio and self.warmup_steps:
            # transformers would silently let one override the other (ms-swift refuses the pair too)
            problems.append("--warmup_ratio and --warmup_steps: give one of them")
        if not 0 <= self.warmup_ratio < 1:
            problems.append(f"--warmup_ratio must be in [0, 1), got {self.warmup_ratio}; --warmup_steps N counts "
                            "steps")
        if self.warmup_steps < 0:
            problems.append(f"--warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.lr_scheduler_kwargs is not None and not isinstance(self.lr_scheduler_kwargs, dict):
            problems.append(f"--lr_scheduler_kwargs takes a JSON object, got {self.lr_scheduler_kwargs!r}")
        evaluates = bool(self.val_dataset or self.split_dataset_ratio)
        if self.save_strategy == "best" and not evaluates:
            problems.append("--save_strategy best keeps the checkpoints of the best eval loss: it needs eval data "
                            "(--val_dataset or --split_dataset_ratio)")
        if self.eval_strategy is None:  # ms-swift: as the save strategy, no without eval data
            as_saved = "steps" if self.save_strategy == "best" else self.save_strategy
            self.eval_strategy = as_saved if evaluates else "no"
        if self.eval_on_start and (not evaluates or self.eval_strategy == "no"):
            problems.append("--eval_on_start true needs evaluation: eval data (--val_dataset or "
                            "--split_dataset_ratio) and an --eval_strategy other than no")
        if self.eval_strategy == "no":
            if self.save_strategy == "best" and evaluates:
                problems.append("--save_strategy best needs evaluation: not with --eval_strategy no")
            self.split_dataset_ratio = 0.0  # as ms-swift: nothing is held out that is never evaluated
        if self.target_regex is not None:
            try:
                re.compile(self.target_regex)
                # One entry in regex form (the group makes it one even for a bare name) is used as given.
                self.target_modules = [f"(?:{self.target_regex})"]
            except re.error as e:
                problems.append(f"--target_regex {self.target_regex!r}: {e}")
        return problems

    def _lora_dtype_problems(self) -> list[str]:
        """--lora_dtype where the adapters keep it: not under an engine that sets every parameter's dtype itself,
        and not float16 (the float16 loss scaler refuses to unscale float16 gradients; ms-swift upcasts them)."""
        dtype = self.lora_dtype
        if dtype is None:
            return []
        if self.train_type != "lora":
            return [f"--lora_dtype {dtype} with --train_type {self.train_type}: no LoRA to cast"]
        if dtype == "float16":
            return ["--lora_dtype float16: the float16 loss scaler cannot unscale float16 gradients; LoRA beside "
                    "float16 weights trains in float32 (leave --lora_dtype unset) or use bfloat16"]
        engine = f"--deepspeed {self.deepspeed}" if self.deepspeed else f"--fsdp {self.fsdp}" if self.fsdp else None
        if engine:
            return [f"--lora_dtype {dtype} with {engine}: the engine sets the trained parameters' dtype itself "
                    "(DeepSpeed: its bf16/fp16 with float32 master copies; FSDP2: float32); leave --lora_dtype unset"]
        return []

    def _mixed_precision_problems(self) -> list[str]:
        """ms-swift's --bf16 / --fp16 (transformers' mixed precision over --torch_dtype weights). vlft trains in the
        weights' dtype, so a flag that is true names it, and one that is false must not be it."""
        flags = {"bf16": (self.bf16, "bfloat16"), "fp16": (self.fp16, "float16")}
        if self.bf16 and self.fp16:
            return ["--bf16 true and --fp16 true: choose one (--torch_dtype bfloat16 or float16)"]
        problems = []
        for flag, (value, dtype) in flags.items():
            if value and self.torch_dtype not in (None, dtype):
                problems.append(f"--{flag} true with --torch_dtype {self.torch_dtype}: vlft computes in the weights' "
                                f"dtype (no {dtype} autocast over {self.torch_dtype} weights); use --torch_dtype "
                                f"{dtype}")
            elif value:
                self.torch_dtype = dtype
        for flag, (value, dtype) in flags.items():
            # Unset, --torch_dtype is bfloat16 on a GPU, so --bf16 false needs it named.
            if value is False and (self.torch_dtype == dtype or (self.torch_dtype is None and flag == "bf16")):
                problems.append(f"--{flag} false with --torch_dtype {self.torch_dtype or 'unset (bfloat16 on GPU)'}: "
                                f"vlft computes in the weights' dtype; without {dtype}, give --torch_dtype float32 "
                                "(or the other half precision)")
        return problems

    def _quantization_problems(self) -> list[str]:
        """ms-swift's --quant_method / --quant_bits: vlft takes bitsandbytes 4-bit under LoRA (QLoRA) only."""
        method, bits = self.quant_method, self.quant_bits
        if method is None and bits is None:
            return []
        problems = []
        if method is None:
            problems.append(f"--quant_bits {bits} needs --quant_method bnb (ms-swift would train unquantized LoRA)")
        elif method != "bnb":
            problems.append(f"--quant_method {method}: vlft quantizes with bitsandbytes only (--quant_method bnb "
                            "--quant_bits 4)")
        if bits is None:
            problems.append(f"--quant_method {method} needs --quant_bits 4")
        elif bits != 4:
            problems.append(f"--quant_bits {bits}: vlft trains on 4-bit weights only (QLoRA: --quant_bits 4); "
                            "8-bit (LLM.int8) and other widths are not supported")
        if self.train_type != "lora":
            problems.append(f"--quant_bits with --train_type {self.train_type}: quantized weights do not train; "
                            "QLoRA trains LoRA adapters on them (--train_type lora)")
        if self.fsdp:
            problems.append(f"--quant_bits with --fsdp {self.fsdp}: FSDP does not shard bitsandbytes' 4-bit weights "
                            "here; train QLoRA without --fsdp (or with --deepspeed zero2)")
        return problems

    def _cuda_graph_batch_problems(self) -> list[str]:
        """What CUDA graphs over fixed-shape rows need (collator.py, compile.py)."""
        flag, problems = "--torch_compile_mode reduce-overhead", []
        if not self.packing:
            problems.append(f"{flag} needs --packing true (CUDA graphs replay rows of one length, --max_length)")
        if self.per_device_eval_batch_size > self.per_device_train_batch_size:
            problems.append(f"{flag}: --per_device_eval_batch_size ({self.per_device_eval_batch_size}) may not "
                            f"exceed --per_device_train_batch_size ({self.per_device_train_batch_size}): every "
                            "row has the training batch's fixed length")
        return problems


# --attn_impl of infer and deploy -> transformers' attn_implementation (ms-swift: flash_attn is flash_attention_2).
GENERATION_ATTENTION = {"sdpa": "sdpa", "eager": "eager", "flash_attn": "flash_attention_2", "fa2": "flash_attention_2",
                        "flash_attention_2": "flash_attention_2", "fa3": "flash_attention_3",
                        "flash_attention_3": "flash_attention_3"}


def generation_attention(attn_impl: str) -> str:
    """transformers' name of the attention kernel that --attn_impl asks generation to use."""
    if attn_impl not in GENERATION_ATTENTION:
        hint = " (varlen is vlft's kernel for padding-free training rows)" if attn_impl == "varlen" else ""
        raise VlftError(f"--attn_impl {attn_impl}: not an attention for generation{hint}; use sdpa, eager, "
                        "flash_attn or flash_attention_3")
    return GENERATION_ATTENTION[attn_impl]


@dataclass
class InferArguments(ModelArguments, TemplateArguments, SelfCognitionArguments):
    """`vlft infer`: answer a dataset or chat interactively, with or without LoRA adapters."""

    adapters: list[str] = field(default_factory=list, metadata={"help": "LoRA checkpoint dir(s); the base "
                                                                       "model comes from their args.json"})
    stream: bool = field(default=False, metadata={"help": "print tokens as they come"})
    max_new_tokens: int = field(default=512, metadata={"help": "tokens generated per answer"})
    temperature: float = field(default=0.0, metadata={"help": "0 is greedy"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling"})
    top_k: int = field(default=50, metadata={"help": "top-k sampling"})
    repetition_penalty: float = field(default=1.0, metadata={"help": "repetition penalty"})
    num_beams: int = field(default=1, metadata={"help": "beam search over N beams (1: greedy or sampled)"})
    seed: int = field(default=42, metadata={"help": "sampling seed"})
    torch_dtype: Literal["bfloat16", "float16", "float32"] | None = field(
        default=None, metadata={"help": "weights dtype (default: bfloat16 on GPU, float32 on CPU)"})
    val_dataset: list[str] = field(default_factory=list, metadata={"help": "answer these datasets"})
    load_data_args: bool = field(default=False, metadata={"help": "answer the training run's val split"})
    result_path: str | None = field(default=None, metadata={"help": "result jsonl (default: in the "
                                                                    "checkpoint dir)"})
    max_batch_size: int = field(default=1, metadata={"help": "requests generated together (left-padded)"})
    attn_impl: str | None = field(default=None, metadata={
        "help": "attention while generating: sdpa (default), eager, flash_attn (= flash_attention_2; needs "
                "flash-attn), flash_attention_3"})
    stop_words: list[str] = field(default_factory=list, metadata={
        "help": "more texts that end an answer (cut off before them), besides the template's stop tokens"})
    merge_lora: bool = field(default=False, metadata={
        "help": "also write the adapter merged into its base to ADAPTER-merged (kept when already there), as "
                "ms-swift does; answers come from the same merged weights either way"})
    logprobs: bool = field(default=False, metadata={
        "help": "the log probability of each generated token, in OpenAI's shape (the result jsonl's `logprobs`; "
                "vlft deploy: for requests that do not set `logprobs`)"})
    top_logprobs: int | None = field(default=None, metadata={
        "help": f"with --logprobs true: also the N likeliest tokens at each step (0 to {MAX_TOP_LOGPROBS})"})

    def problems(self) -> list[str]:
        problems = TemplateArguments.problems(self)
        if not self.model and not self.adapters:
            problems.append("--model or --adapters is required")
        if self.top_logprobs is not None and not self.logprobs:
            problems.append(f"--top_logprobs {self.top_logprobs} needs --logprobs true")
        if self.top_logprobs is not None and not 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS:
            problems.append(f"--top_logprobs must be in [0, {MAX_TOP_LOGPROBS}], got {self.top_logprobs}")
        if self.merge_lora:
            specs = collected(problems, adapter_specs, self.adapters)  # NAME=PATH entries are deploy's
            if specs is not None and (len(self.adapters) != 1 or specs.named):
                problems.append(f"--merge_lora true merges one adapter checkpoint (--adapters PATH), got "
                                f"{' '.join(self.adapters) or 'none'}")
        if self.attn_impl is not None:
            self.attn_impl = collected(problems, generation_attention, self.attn_impl)
        problems += beam_problems(self.num_beams, stream=self.stream, logprobs=self.logprobs)
        problems += identity_problems(self.model_name, self.model_author)
        return problems + not_positive(self, ("max_new_tokens", "max_batch_size", "num_beams"))


@dataclass
class DeployArguments(InferArguments):
    """`vlft deploy`: an OpenAI-compatible server (`/v1/models`, `/v1/chat/completions`)."""

    host: str = field(default="127.0.0.1", metadata={"help": "address to listen on"})
    port: int = field(default=8000, metadata={"help": "port (0 picks a free one)"})
    served_model_name: str | None = field(default=None, metadata={
        "help": "the model's name in /v1/models and in answers (default: --model, or the last --adapters)"})
    # Secret: left out of args.json (public_args) and of the dataclass repr, never printed.
    api_key: str | None = field(default=None, repr=False, metadata={
        "help": "require `Authorization: Bearer KEY` on every request", "env": "VLFT_API_KEY", "secret": True})
    allow_local_media: str | None = field(default=None, metadata={
        "help": "the one folder requests may name local image/video files in; unset: no local files"})
    max_body_bytes: int = field(default=32 * 1024 * 1024, metadata={
        "help": "largest request body, and largest media file or download (413 above)"})
    max_media_per_request: int = field(default=8, metadata={"help": "images plus videos allowed in one request"})
    # TemplateArguments' flag, with a lower default: a server decodes what strangers send.
    max_image_pixels: int = field(default=50_000_000, metadata={
        "help": "images (and video frames) over this many pixels are refused before decoding"})
    max_tokens_limit: int = field(default=4096, metadata={"help": "largest max_tokens a request may ask for"})
    max_pending_requests: int = field(default=256, metadata={"help": "requests queued or running at once "
                                                                     "(503 above)"})
    client_timeout: float = field(default=60.0, metadata={
        "help": "seconds a client may stall while sending its request or reading the answer"})
    max_model_len: int | None = field(default=None, metadata={
        "help": "prompt plus answer tokens per request (default: the model's max_position_embeddings); longer "
                "prompts, and max_tokens above what the prompt leaves, are refused (400)"})
    max_request_pixels: int = field(default=100_000_000, metadata={
        "help": "pixels of all images of one request together, read from their headers before decoding (400 above)"})
    allow_remote_media: bool = field(default=False, metadata={
        "help": "fetch http(s) image/video URLs (never from loopback, link-local or private addresses)"})

    def problems(self) -> list[str]:
        problems = super().problems()
        if self.allow_local_media is not None and self.allow_local_media.strip().lower() in ("true", "false", ""):
            problems.append(f"--allow_local_media takes a folder (the only place local media may come from), "
                            f"got {self.allow_local_media!r}")
        if self.api_key is not None and not self.api_key.strip():
            problems.append("--api_key is empty")
        if self.stop_words:
            problems.append("--stop_words is not supported by vlft deploy (answers end at the template's stop "
                            "tokens or max_tokens); vlft infer takes it")
        if self.served_model_name is not None and not self.served_model_name.strip():
            problems.append("--served_model_name is empty")
        problems += not_positive(self, ("max_body_bytes", "max_media_per_request", "max_tokens_limit",
                                        "max_pending_requests", "client_timeout", "max_model_len",
                                        "max_request_pixels"))
        if self.max_new_tokens > self.max_tokens_limit:
            problems.append(f"--max_new_tokens {self.max_new_tokens} is above --max_tokens_limit "
                            f"{self.max_tokens_limit}")
        from vlft.infer.adapters import adapter_specs

        specs = collected(problems, adapter_specs, self.adapters)
        if specs and self.served_model_name in specs.named:
            problems.append(f"--served_model_name {self.served_model_name} is also the name of an adapter")
        return problems
