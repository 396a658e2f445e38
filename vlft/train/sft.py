"""`vlft sft`, top to bottom: check the arguments, encode the data once, load the model, choose what
trains, build the batches, train with transformers' Trainer, save.

Everything that makes a training step differ from transformers' Trainer on a stock HF model, and where it
lives (tests/train/test_step_changes.py fails by name if transformers renames a method overridden here):

Model, changed once at load (`load_model`, vlft/train/model.py):
  - `--quant_method bnb --quant_bits 4` (QLoRA, quantization.py): the LLM's linears load as bitsandbytes 4-bit
    weights (the family's vision tower, aligner, output head and routers stay unquantized); PEFT's bitsandbytes
    LoRA layers train on them.
  - `attention.attach_row_boundaries`: forward pre-hooks on the model and its language model take the packed
    row's boundaries (`cu_seq_lens`) from the inputs for every token-mixing layer (attention.py).
  - `attention.register_varlen_attention` / `use_varlen_in_vision_tower`: the varlen attention kernel, and one
    attention call per vision block over all images (attention.py).
  - `linear_attention.replace_linear_attention`: hybrid families' Gated DeltaNet layers swapped for
    PackedGatedDeltaNet, which keeps packed samples apart (linear_attention.py).
  - `fit_embeddings` (vlft/model/loading.py): --new_special_tokens beyond the embedding's free rows grow it (and an
    untied head), the new rows the mean of the others.
  - `choose_fast_path` / `FastPath.for_model` (fast_path.py): what is compiled, replayed as CUDA graphs and scored
    by the chunked loss when the user sets none of those flags (on CUDA, where each applies; one line says why not).
  - `checkpoint_choice` (`--gradient_checkpointing auto`, memory_plan.py): one probe forward of the longest row
    counts each decoder layer's saved activations; only as many layers recompute as the GPU's memory needs.
  - `enable_gradient_checkpointing`, `prepare_trainable` (LoRA targets, freeze flags: tuners.py, modules.py),
    `replace_lora_dropouts` (compiled runs: LoRA dropout masks from an integer hash, so layers with dropout
    compile whole; counter_dropout.py, its counter set on resume by ResumeDropoutCounter),
    `set_router_aux_loss`, `compile_decoder_layers` / `compile_frozen_vision_blocks` (compile.py),
    `cast_adapters` (`--lora_dtype`: the adapters in that dtype instead of PEFT's float32; tuners.py),
    `upcast_trained_float16` (CUDA float16 runs without DeepSpeed: trained parameters in float32 for the loss
    scaler, autocast computing in float16).
  - `copy_first_gradients` (graph_gradients.py): under CUDA graphs with gradient accumulation, a hook on each
    trained parameter of the decoder layers copies its first gradient of a step out of the graph's memory, which
    the next replay reuses.
Trainer (`SftTrainer`, vlft/train/trainer.py, and `AtomicCheckpoints`, vlft/train/checkpointing.py):
  - `create_optimizer`: per-part learning rates (--vit_lr, --aligner_lr).
  - `training_step`: LoRA inputs kept in half precision under autocast (LoraLayers); CUDA-graph step marks.
  - `compute_loss`: token and FLOP counting; `--chunked_loss` (chunked_loss.py: a forward hook on the final
    norm captures its output, the loss is computed in chunks); `--loss_scale` weightings (data/loss_scale.py: the
    batch's `loss_scale` weights each target's loss in the chunked loss, or from whole logits in weighted_loss.py);
    ZeRO-3's and FSDP's balanced vision calls (zero3.py: a forward pre-hook on the language model runs a dummy
    vision pass on ranks whose batch has no image).
  - `prediction_step`: CUDA-graph step marks. `log`: tokens/s, MFU, memory. `floating_point_ops`: cached count.
  - `_clip_grad_norm` (private in transformers): clips over the trained parameters only.
  - `--sequence_parallel_size N` (sequence_parallel.py, ulysses.py): `get_train_dataloader` / `get_eval_dataloader`
    deal each row to a group of N ranks; a forward pre-hook on the language model keeps each rank's slice of the
    row (embeddings, position ids, deepstack features) with the whole row's boundaries; the language model's
    attention runs between two all-to-alls (registered with AttentionInterface), and so do a hybrid family's
    linear-attention layers (PackedGatedDeltaNet.split_heads_over); `compute_loss` scores the shard's shifted
    targets and reduces the target count over the group.
  - `train` / `_save_checkpoint` (private in transformers): the checkpoint to resume from is checked against the
    model first (checkpoint_check.py); checkpoints are staged and renamed into place whole.
  - `--fsdp` (fsdp.py): transformers' own FSDP2 (accelerate's `fully_shard`), each of the family's
    `block_classes` (decoder layer, vision block) a unit, bf16/fp16 runs reducing gradients in float32
    (`half_precision_policy`); `create_accelerator_and_postprocess` (`FsdpOnCpu`)
    turns it on for CPU processes too, which accelerate leaves as plain DDP.
Through TrainingArguments (`trainer_arguments`), transformers' own: `--neftune_noise_alpha` (its NEFTune hook adds
noise to the input embeddings while training), `--torch_empty_cache_steps`, `--ddp_find_unused_parameters`.
Batches: the collators (vlft/data/collator.py: packed or padding-free rows with position ids [4, 1, L], or
padded batches) and PixelsOnFetch (pixels made in the data-loader workers, vlft/data/dataset.py).
Around the loop: `long_lived_objects_frozen` (frozen_gc.py: no full GC pass walks the model mid-step) and the
callbacks (callbacks.py: logging.jsonl, with the last step always logged, and plots). Before it: the checks of
every argument at once (preflight.py) and the data / steps / memory summary (summary.py).
"""

from __future__ import annotations

import json
import logging
import os
import random
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import NamedTuple

import torch

from vlft.arguments import SftArguments
from vlft.arguments import public_args
from vlft.data.collator import FixedRowShape, PaddedCollator, PaddingFreeCollator, VisionTokens
from vlft.data.dataset import PixelsOnFetch
from vlft.data.encode import EncodedSample, TooLongError
from vlft.data.loss_scale import weighted_loss_scale
from vlft.data.packing import pack_samples
from vlft.data.pipeline import EncodeResult, build_encoder, encode_dataset
from vlft.data.report import bad_results, listed_errors, one_line, skipped_summary, write_skipped_lines
from vlft.errors import VlftError
from vlft.model.loading import fit_embeddings
from vlft.train.attention import ATTENTION_NAME
from vlft.train.callbacks import JsonlLogCallback, PlotCallback, reporting_integrations, tensorboard_callbacks
from vlft.train.checkpointing import check_resumable, clear_interrupted_saves, write_checkpoint_extras
from vlft.train.chunked_loss import ChunkedLoss
from vlft.train.compile import compile_decoder_layers, compile_frozen_vision_blocks, decoder_layers
from vlft.train.counter_dropout import ResumeDropoutCounter, replace_lora_dropouts
from vlft.train.deepspeed import init_deepspeed_comm, resolve_deepspeed_config
from vlft.train.fast_path import FastPath, choose_fast_path, layers_not_whole
from vlft.train.frozen_gc import long_lived_objects_frozen
from vlft.train.fsdp import FsdpSettings, fsdp_problems, half_precision_policy, resolve_fsdp
from vlft.train.graph_gradients import copy_first_gradients
from vlft.train.launch import is_distributed_worker
from vlft.train.memory_plan import apply_plan, measure_run_memory
from vlft.train.model import (check_linear_attention_kernels, enable_gradient_checkpointing, load_model,
                              resolve_attention, resolve_dtype, set_router_aux_loss)
from vlft.errors import collected
from vlft.train.preflight import preflight_problems, raise_problems
from vlft.train.quantization import (bnb_4bit, bnb_config, installed_bitsandbytes, qlora_note,
                                     quantization_run_problems)
from vlft.train.run_dir import agreed_run_dir, link_checkpoints, new_run_dir, write_args_json
from vlft.train.sequence_parallel import sequence_parallel_problems, start_sequence_parallel
from vlft.train.summary import log_run_summary
from vlft.train.trainer import SftTrainer
from vlft.train.tuners import cast_adapters, count_parameters, prepare_trainable, upcast_trained_float16

logger = logging.getLogger("vlft")
MAX_LISTED_ERRORS = 20


def run_sft(args: SftArguments, checks: RunChecks | None = None) -> Path:
    """Train as the arguments say; returns the run dir (output/v{N}-{time}). `checks`: what
    check_run_arguments returned for these arguments, when the caller has run it."""
    # 1. What can fail fast fails before any data or model is loaded.
    cuda = torch.cuda.is_available()
    dtype = resolve_dtype(args.torch_dtype, cuda)
    attn_implementation, attention_note, ds_config, fsdp = checks or check_run_arguments(args, cuda)
    fast = choose_fast_path(args, cuda, _zero_stage(ds_config) if ds_config is not None else None,
                            attn_implementation == ATTENTION_NAME, sharded=fsdp is not None)
    encoder, model_dir, family = build_encoder(args)  # the family names the blocks --fsdp shards one by one
    # One process names its run itself; ranks of a multi-node launch agree on one name once they are connected.
    distributed = is_distributed_worker(os.environ)
    output_dir = Path(args.output_dir)
    run_dir = new_run_dir(output_dir, datetime.now()) if args.add_version and not distributed else output_dir
    training_args = trainer_arguments(args, run_dir, ds_config, dtype, cuda, has_eval=bool(
        args.val_dataset or args.split_dataset_ratio), fsdp_config=fsdp and fsdp.training_config(
            family.block_classes))
    if ds_config is not None:
        init_deepspeed_comm(cuda)
    main_process = training_args.process_index == 0
    sequence_parallel = start_sequence_parallel(args.sequence_parallel_size, training_args.world_size, family,
                                                model_dir)
    if args.add_version and distributed:
        run_dir = agreed_run_dir(output_dir, datetime.now(), main_process)
        training_args.output_dir = str(run_dir)
    if main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_args_json(run_dir / "args.json", args)
        for line in clear_interrupted_saves(run_dir):  # what a killed run left behind
            logger.warning(line)

    # 2. Data: every line encoded once (rank 0 first, the others read its cache); any bad line stops here
    # (--strict false: bad lines are skipped, written to skipped_lines.jsonl and listed at the end).
    check_linear_attention_kernels(family, args.padding_free, cuda, dtype)  # before any data or model loads
    with training_args.main_process_first(desc="encoding"):
        train, skipped = encoded_samples(args, encoder, model_dir, args.dataset)
        val, val_skipped = (encoded_samples(args, encoder, model_dir, args.val_dataset) if args.val_dataset
                            else ([], []))
    skipped += val_skipped  # bad lines left out under --strict false
    if main_process and skipped:
        write_skipped_lines(run_dir / "skipped_lines.jsonl", skipped)
    if args.split_dataset_ratio and not val:
        train, val = split_samples(train, args.split_dataset_ratio, args.seed)
    if main_process and val:
        write_val_rows(run_dir / "val_dataset.jsonl", val, args)  # for `vlft infer --load_data_args true`

    # 3. The model, and what of it trains.
    if main_process:
        logger.warning(attention_note)
    from transformers import set_seed

    set_seed(args.seed)  # LoRA's initial weights come from the global RNG
    quantization = bnb_4bit(args, dtype)  # QLoRA: the LLM's linears in 4-bit (quantization.py)
    if main_process and quantization:
        logger.warning(qlora_note(quantization, family))
    model = load_model(model_dir, dtype, attn_implementation, quantization and bnb_config(quantization, family),
                       training_args.device)
    grown = fit_embeddings(model, len(encoder.tokenizer))  # --new_special_tokens beyond the embedding's free rows
    if main_process and grown:
        logger.warning(f"--new_special_tokens: the embedding grows to {grown} rows (the new ones the mean of the "
                       "others); train them with --modules_to_save embed_tokens lm_head")
    set_router_aux_loss(model, args.router_aux_loss_coef)
    if sequence_parallel is not None:  # each rank of a group trains 1/N of a row (sequence_parallel.py)
        sequence_parallel.attach(model)
        if main_process:
            shard = sequence_parallel.shard
            logger.warning(f"sequence parallel: each row split over {shard.size} ranks (Ulysses all-to-all around "
                           f"attention), {shard.data_size} row(s) per step at once")
    enable_gradient_checkpointing(model, llm=args.gradient_checkpointing in (True, "auto"),
                                  vit=args.vit_gradient_checkpointing)
    model = prepare_trainable(model, family, args)
    if args.lora_dtype is not None:  # ms-swift's --lora_dtype (PEFT keeps adapters in float32 otherwise)
        cast_adapters(model, getattr(torch, args.lora_dtype))
    if dtype == torch.float16 and ds_config is None and cuda:  # accelerate's loss scaler (CUDA float16 runs without
        upcast_trained_float16(model)                          # DeepSpeed) unscales float32 gradients only
    # Compiled layers: LoRA dropout from an integer hash instead of torch's RNG, so layers with it compile whole.
    dropout_counter = replace_lora_dropouts(model, training_args.process_index) if fast.torch_compile else None
    layers = decoder_layers(model)
    kinds = family.decoder_kinds(model.config.get_text_config())
    whole, why_not_whole = layers_not_whole(layers, kinds)
    fast = fast.for_model(whole, len(layers), why_not_whole,
                          bool(getattr(model.config.get_text_config(), "output_router_logits", False)),
                          moe=any(kind.moe for kind in kinds))
    if dropout_counter and not fast.torch_compile:  # not compiled after all: PEFT's own dropout again
        dropout_counter.restore()
        dropout_counter = None
    if main_process and fast.line():
        logger.warning(fast.line())
    trainable, total = count_parameters(model)
    if main_process:
        logger.warning(f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.3f}%)")

    # 4. Batches: packed rows, padding-free rows, or padded batches.
    tokenizer = encoder.tokenizer
    tokens = VisionTokens(encoder.image_pad_id, encoder.video_pad_id, tokenizer.pad_token_id)
    train_rows = pack(train, args.row_length, args.seed) if args.packing else train
    eval_rows = pack(val, args.row_length, args.seed) if args.packing else val
    log_run_summary(args, training_args, model, family, encoder, train, val, skipped, train_rows, ds_config,
                    fast.chunked_loss)
    if args.padding_free:
        tokens_per_second = getattr(model.config.vision_config, "tokens_per_second", None)
        fixed_shape = FixedRowShape.for_rows(train_rows + eval_rows, args.row_length,
                                             args.per_device_train_batch_size) if fast.cuda_graphs else None
        collator = PaddingFreeCollator(family, tokens, tokens_per_second, fixed_shape)
    else:
        collator = PaddedCollator(tokens)
    train_dataset = PixelsOnFetch(train_rows, encoder)
    eval_dataset = PixelsOnFetch(eval_rows, encoder) if eval_rows else None

    # 5. What the step recomputes (the memory plan probes the longest row before anything compiles), then compile.
    copied_gradients = fast.cuda_graphs and args.gradient_accumulation_steps > 1  # out of graph memory
    if args.gradient_checkpointing == "auto":
        plan_note = checkpoint_choice(args, model, layers, train_dataset, collator, fast, dtype, training_args,
                                      ds_config is not None or fsdp is not None, copied_gradients)
        if main_process:
            logger.warning(plan_note)
    if copied_gradients:
        copy_first_gradients(layers)
    if fast.torch_compile:
        compiled, whole = compile_decoder_layers(model, mode=fast.compile_mode)
        vision = compile_frozen_vision_blocks(model)
        if main_process:
            logger.warning(f"torch.compile: {compiled} decoder layers, {whole} of them whole"
                           f"{' (as CUDA graphs over fixed-shape rows)' if fast.cuda_graphs else ''}, and {vision} "
                           "frozen vision blocks (compiled during the first steps)")
            if whole < compiled:
                logger.warning("torch.compile: linear-attention layers are compiled part by part, a smaller speed-up "
                               "(vlft/train/compile.py)")

    # 6. Train.
    part_lrs = {part: lr for part, lr in (("vit", args.vit_lr), ("aligner", args.aligner_lr)) if lr is not None}
    processor = encoder.processor  # not loaded again: the real vocabularies' tokenizers take 2-5 s to load on a CPU
    trainer = SftTrainer(model=model, args=training_args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                         data_collator=collator, processing_class=processor,
                         callbacks=[JsonlLogCallback(run_dir / "logging.jsonl"), PlotCallback(run_dir)] + (
                             [ResumeDropoutCounter(dropout_counter)] if dropout_counter else []) + (
                             tensorboard_callbacks(args.report_to, args.logging_dir)),
                         family=family, part_lrs=part_lrs,
                         balanced_vision_calls=_zero_stage(ds_config) == 3 or fsdp is not None,
                         chunked_loss=ChunkedLoss(model) if fast.chunked_loss else None, cuda_graphs=fast.cuda_graphs,
                         sequence_parallel=sequence_parallel,
                         checkpoint_extras=partial(write_checkpoint_extras, processor=processor,
                                                   args_json=public_args(args), unloaded_from=(
                                                       model_dir, family.unloaded_prefixes)))
    with long_lived_objects_frozen():  # no full garbage collection walks the model mid-step (frozen_gc.py)
        trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)

    # 7. The last step is always saved (a full checkpoint, which resumes, unless --save_only_model).
    last = run_dir / f"checkpoint-{trainer.state.global_step}"
    if not last.exists():
        trainer.save_checkpoint()
    logger.warning(f"last checkpoint: {last}")
    if main_process and args.create_checkpoint_symlink:
        for link in link_checkpoints(run_dir, last, trainer.state.best_model_checkpoint):
            logger.warning(f"{link.name}: {link} -> {link.readlink()}")
    if main_process and skipped:
        logger.warning(skipped_summary(skipped, run_dir / "skipped_lines.jsonl", MAX_LISTED_ERRORS))
    return run_dir


def checkpoint_choice(args: SftArguments, model, layers, dataset: PixelsOnFetch, collator, fast: FastPath,
                      dtype: torch.dtype, training_args, sharded: bool, copied_gradients: bool) -> str:
    """`--gradient_checkpointing auto`: the memory plan (memory_plan.py) on one CUDA process without DeepSpeed or
    FSDP, applied to the decoder layers; elsewhere every layer recomputes (as enabled). `copied_gradients`: the
    layers' gradients are copied out of CUDA graph memory (graph_gradients.py). Returns the line to log."""
    why_not = ("CPU" if not torch.cuda.is_available() else "--deepspeed / --fsdp shard what a process holds"
               if sharded else f"{training_args.world_size} processes" if training_args.world_size > 1 else None)
    if why_not is not None:
        return (f"gradient checkpointing: all {len(layers)} decoder layers (--gradient_checkpointing auto plans "
                f"for one CUDA process: {why_not})")

    def row_tokens(item) -> int:
        return sum(len(s.input_ids) for s in item) if isinstance(item, list) else len(item.input_ids)

    longest = max(range(len(dataset)), key=lambda i: row_tokens(dataset.items[i]))
    batch = collator([dataset[longest]])
    rows = args.per_device_train_batch_size
    step_tokens = rows * (batch["input_ids"].numel() if fast.cuda_graphs else row_tokens(dataset.items[longest]))
    plan = measure_run_memory(model, layers, batch, step_tokens, fast.chunked_loss, dtype, training_args.device,
                              copied_gradients, compiled=fast.torch_compile).plan()
    apply_plan(layers, plan.recomputed)
    return plan.line()


class RunChecks(NamedTuple):
    """What check_run_arguments settles for a run."""

    attn_implementation: str
    attention_note: str
    ds_config: dict | None
    fsdp: FsdpSettings | None = None


def check_run_arguments(args: SftArguments, cuda: bool, argument_problems: list[str] = ()) -> RunChecks:
    """The attention, its note and the DeepSpeed config; one VlftError listing every problem of the command that
    shows without data or a model: `argument_problems` (the arguments' own, ArgumentProblems), and those found with
    the machine's packages and dirs (preflight.py)."""
    problems: list[str] = list(argument_problems)
    attention = collected(problems, resolve_attention, args.attn_impl, args.padding_free, cuda)
    attn_implementation, attention_note = attention or (None, None)
    ds_config = collected(problems, resolve_deepspeed_config, args.deepspeed)
    fsdp = collected(problems, resolve_fsdp, args.fsdp, args.fsdp_config)
    if fsdp is not None:
        problems += fsdp_problems(args)
    if args.torch_compile and _zero_stage(ds_config) == 3:
        problems.append("--torch_compile true does not run under ZeRO-3 (its parameter gathering hooks break the "
                        "compiled graphs); use ZeRO-2 or no --deepspeed")
    if args.torch_compile_mode == "reduce-overhead" and cuda and attention and attn_implementation != ATTENTION_NAME:
        problems.append(f"--torch_compile_mode reduce-overhead needs the varlen attention (--attn_impl varlen), not "
                        f"{attn_implementation}: only it takes the rows' boundaries without host reads")
    if args.torch_compile_mode == "reduce-overhead" and ds_config is not None:
        problems.append("--torch_compile_mode reduce-overhead does not run under --deepspeed (CUDA graphs beside "
                        "DeepSpeed's gradient hooks are untested); use --torch_compile true, or no --deepspeed")
    if args.chunked_loss and _zero_stage(ds_config) == 3:
        problems.append("--chunked_loss true does not run under ZeRO-3 (the output head's weight is partitioned "
                        "outside its forward); use ZeRO-2 or no --deepspeed")
    if args.torch_dtype == "float16" and not cuda:  # LoRA layers would meet float16 inputs with float32 adapters
        problems.append("--torch_dtype float16 trains on a GPU only (the Trainer runs no float16 autocast on the CPU); "
                        "use float32 or bfloat16 here")
    problems += sequence_parallel_problems(args)
    if args.sequence_parallel_size > 1 and weighted_loss_scale(args.loss_scale):
        problems.append(f"--loss_scale {args.loss_scale} weighs tokens, which --sequence_parallel_size "
                        f"{args.sequence_parallel_size} does not carry to its shards; leave one of them out")
    problems += preflight_problems(args)
    problems += quantization_run_problems(args.quant_bits, _zero_stage(ds_config), installed_bitsandbytes())
    if args.resume_from_checkpoint and (ds_config is not None or args.deepspeed is None):
        collected(problems, check_resumable, Path(args.resume_from_checkpoint), args, ds_config)
    raise_problems(problems)
    return RunChecks(attn_implementation, attention_note, ds_config, fsdp)


def trainer_arguments(args: SftArguments, run_dir: Path, ds_config: dict | None, dtype: torch.dtype, cuda: bool,
                      has_eval: bool, fsdp_config: dict | None = None):
    """transformers TrainingArguments from vlft's (ms-swift's) arguments; VlftError for values transformers refuses
    (an unknown --optim, a --save_strategy it cannot follow)."""
    from transformers import TrainingArguments

    evaluates = has_eval and args.eval_strategy != "no"
    optional = {"optim": args.optim} if args.optim else {}  # else transformers' own default
    try:
        training_args = TrainingArguments(
            output_dir=str(run_dir), num_train_epochs=args.num_train_epochs, max_steps=args.max_steps,
            per_device_train_batch_size=args.per_device_train_batch_size,
            per_device_eval_batch_size=args.per_device_eval_batch_size,
            gradient_accumulation_steps=args.gradient_accumulation_steps, learning_rate=args.learning_rate,
            weight_decay=args.weight_decay, max_grad_norm=args.max_grad_norm,
            # transformers 5 reads a warmup_steps below 1 as a share of the steps (its warmup_ratio is deprecated)
            warmup_steps=args.warmup_steps or args.warmup_ratio,
            lr_scheduler_type=args.lr_scheduler_type, lr_scheduler_kwargs=args.lr_scheduler_kwargs,
            adam_beta1=args.adam_beta1, adam_beta2=args.adam_beta2, adam_epsilon=args.adam_epsilon, **optional,
            logging_steps=args.logging_steps, logging_nan_inf_filter=args.logging_nan_inf_filter,
            logging_first_step=args.logging_first_step,
            save_strategy=args.save_strategy, save_steps=args.save_steps, save_total_limit=args.save_total_limit,
            eval_strategy=args.eval_strategy if evaluates else "no", eval_steps=args.eval_steps,
            metric_for_best_model="eval_loss" if evaluates else None, greater_is_better=False if evaluates else None,
            seed=args.seed, data_seed=args.seed if args.data_seed is None else args.data_seed,
            bf16=dtype == torch.bfloat16, fp16=dtype == torch.float16, use_cpu=not cuda,
            ddp_backend="gloo" if not cuda and is_distributed_worker(os.environ) else None,
            ddp_timeout=args.ddp_timeout, deepspeed=ds_config,
            fsdp=fsdp_config is not None or None, fsdp_config=fsdp_config,  # FSDP2 (fsdp.py)
            dataloader_num_workers=args.dataloader_num_workers,
            # --logging_dir: vlft's own TensorBoard callback writes there (tensorboard_callbacks)
            report_to=[r for r in reporting_integrations(args.report_to)
                       if not (args.logging_dir and r == "tensorboard")] or ["none"],
            save_only_model=args.save_only_model, eval_on_start=args.eval_on_start and evaluates,
            neftune_noise_alpha=args.neftune_noise_alpha or None,
            ddp_find_unused_parameters=args.ddp_find_unused_parameters,
            torch_empty_cache_steps=args.torch_empty_cache_steps,
            remove_unused_columns=False, gradient_checkpointing=False,  # vlft enables it per part
            # Batches reach the GPU from pinned memory without a host sync, the next one while this one trains.
            accelerator_config={"non_blocking": cuda},
        )
    except ValueError as e:  # transformers checks the combination of its arguments here
        raise VlftError(f"transformers refuses the training arguments: {e}") from None
    if training_args.fsdp_plugin_args is not None and dtype in (torch.bfloat16, torch.float16):
        # transformers' fsdp_config has no mixed-precision entry; accelerate builds its plugin from these arguments
        training_args.fsdp_plugin_args["mixed_precision_policy"] = half_precision_policy(dtype)
    return training_args


def encoded_samples(args: SftArguments, encoder, model_dir: Path,
                    specs: list[str]) -> tuple[list[EncodedSample], list[EncodeResult]]:
    """(the encodings of every good line, the bad lines); with --strict true a VlftError listing every bad
    line if there is one."""
    results = encode_dataset(args, encoder, model_dir, specs, keep_pixels=False)  # pixels: when fetched
    skipped = bad_results(results)
    bad = [r.error for r in skipped]
    if bad and args.strict:
        listed = "\n".join(listed_errors(skipped, MAX_LISTED_ERRORS, "`vlft data check` lists them all"))
        raise VlftError(f"{len(bad)} bad dataset line(s) (`vlft data check` lists them all; --strict false "
                        f"skips them):\n{listed}")
    if bad:
        logger.warning(f"--strict false: skipping {len(bad)} bad line(s) of {' '.join(specs)}")
    dropped = [r.error for r in results if isinstance(r.error, TooLongError)]
    for error in dropped:
        logger.warning(f"dropped: {one_line(str(error))}")
    samples = [r.sample for r in results if r.sample is not None]
    for sample in [s for s in samples if s.truncated][:MAX_LISTED_ERRORS]:
        logger.warning(f"truncated ({args.truncation_strategy}): {one_line(f'{sample.source}:{sample.line}')}: "
                       f"dropped {sample.dropped}")
    if not samples:
        raise VlftError(f"no usable samples in {' '.join(specs)}")
    return samples, skipped


def write_val_rows(path: Path, val: list[EncodedSample], args: SftArguments) -> None:
    """The validation split's original rows (media paths made absolute), one JSON object per line."""
    from vlft.data.media import with_absolute_media
    from vlft.data.pipeline import read_rows
    from vlft.paths import cache_root

    rows = {(r.source, r.line): r for r in read_rows(args, args.dataset + args.val_dataset,
                                                     cache_root(args.cache_dir))}
    with open(path, "w", encoding="utf-8") as f:
        for sample in val:
            raw = rows.get((sample.source, sample.line))
            if raw is None or raw.row is None:
                continue
            try:
                f.write(json.dumps(with_absolute_media(raw.row, raw.base_dir), ensure_ascii=False) + "\n")
            except TypeError:  # in-memory media (hub rows with PIL images) cannot be written as JSON
                logger.warning(f"{sample.source}:{sample.line}: not written to {path.name} (media not JSON)")


def split_samples(samples: list, ratio: float, seed: int) -> tuple[list, list]:
    """(train, val): a seeded random `ratio` of the samples held out, at least one."""
    order = list(range(len(samples)))
    random.Random(seed).shuffle(order)
    n_val = max(1, round(len(samples) * ratio))
    if n_val >= len(samples):
        raise VlftError(f"--split_dataset_ratio {ratio} leaves no training sample of {len(samples)}")
    held = set(order[:n_val])
    return [s for i, s in enumerate(samples) if i not in held], [s for i, s in enumerate(samples) if i in held]


def pack(samples: list[EncodedSample], max_length: int, seed: int) -> list[list[EncodedSample]]:
    """Samples grouped into rows of at most max_length tokens."""
    return [[samples[i] for i in row] for row in pack_samples([s.length for s in samples], max_length, seed)]


def _zero_stage(ds_config: dict | None) -> int:
    return int((ds_config or {}).get("zero_optimization", {}).get("stage", 0))
