"""Command-line arguments from the argument dataclasses, ms-swift style (`--flag value`, `--flag true`).

Precedence: command line > `--model_kwargs` (ms-swift's JSON of environment settings) > environment variable
named in the field's metadata > default. This is the one place environment variables become typed arguments.
Every flag a command does not take is reported at once: ms-swift's flags that vlft refuses with what to use
instead (REFUSED, listed in docs/ms_swift.md), others with the nearest flag of the command.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import os
import re
import sys
import typing
from typing import Any, Literal, Mapping

from vlft.errors import VlftError

TRUE = frozenset({"true", "1", "yes", "y", "on"})
FALSE = frozenset({"false", "0", "no", "n", "off"})

_LIGER = ("Liger's kernels are not used; --chunked_loss true computes the loss without a whole row's float32 "
          "logits, the memory Liger's fused loss saves")
_WHOLE_DATA = ("every line is encoded once before training (cached: --load_from_cache_file true; in parallel: "
               "--dataset_num_proc N), and pixels are made when a batch is fetched")
_SHARD = "--deepspeed zero3 (or zero3_offload) or --fsdp fsdp2 shards the model over the GPUs instead"
_QUANT = ("vlft quantizes only to train QLoRA: vlft sft --quant_method bnb --quant_bits 4 (with "
          "--bnb_4bit_quant_type, --bnb_4bit_use_double_quant, --bnb_4bit_compute_dtype); inference and export use "
          "the unquantized weights, and no quantized model is written")
_TUNERS = "vlft trains LoRA (--train_type lora, with --use_dora or --use_rslora) or in full (--train_type full)"
_ENGINES = ("vlft generates with transformers (ms-swift's --infer_backend transformers); vLLM, SGLang and LMDeploy "
            "are not used")
_MEGATRON = ("Megatron-Core LoRA adapters are not converted: vlft export --adapters CKPT --to_mcore true converts "
             "a vlft LoRA checkpoint merged into its base")
_NONE: frozenset[str] = frozenset()


class _AnyValue(frozenset):
    """Every value: a flag that changes nothing vlft does, whatever it is set to."""

    def __contains__(self, value: object) -> bool:
        return True


_ANY: frozenset[str] = _AnyValue()


class _JsonEqual(frozenset):
    """The values whose JSON equals `value`, however spaced."""

    def __new__(cls, value: Any):
        made = super().__new__(cls)
        made.value = value
        return made

    def __contains__(self, text: object) -> bool:
        try:
            return json.loads(str(text)) == self.value
        except ValueError:
            return False


_NO_ACCURACY = "vlft logs the loss (and tokens/s), not token accuracy"
_SAFETENSORS = "vlft always writes safetensors"
_NO_GENERATION = "vlft sft generates nothing (evaluation computes the loss)"
_NO_LOGPROBS = "vlft sft and export generate nothing; vlft infer and deploy take it"
_SHUFFLED = "the training samples (or packed rows) are drawn in a seeded random order"

# ms-swift flags of sft / infer / deploy / export that vlft does not take: name -> (values that ask for what vlft
# does anyway, accepted and dropped; why not, and what to use instead). A name ending in "_" covers every flag that
# begins with it (--vllm_gpu_memory_utilization). A field of the command always wins over an entry here.
REFUSED: dict[str, tuple[frozenset[str], str]] = {
    "use_liger_kernel": (FALSE, _LIGER),
    "liger_kernel_config": (_NONE, _LIGER),
    "streaming": (FALSE, _WHOLE_DATA),
    "lazy_tokenize": (FALSE, _WHOLE_DATA),
    "cached_dataset": (_NONE, "vlft caches encodings itself (--load_from_cache_file true): pass the data with "
                              "--dataset"),
    "cached_val_dataset": (_NONE, "vlft caches encodings itself: pass the data with --val_dataset"),
    "packing_length": (_NONE, "a training flag: vlft sft and megatron sft take it"),
    "device_map": (_NONE, _SHARD),
    "max_memory": (_NONE, _SHARD),
    "deepspeed_autotp_size": (_NONE, "put DeepSpeed's own settings in a config file: --deepspeed ds_config.json"),
    "zero_hpz_partition_size": (_NONE, "put DeepSpeed's own settings in a config file: --deepspeed ds_config.json"),
    "bf16": (_NONE, "--torch_dtype bfloat16 sets the weights' dtype and the mixed precision together"),
    "fp16": (_NONE, "--torch_dtype float16 sets the weights' dtype and the mixed precision together"),
    "push_to_hub": (FALSE, "push a checkpoint after training: vlft export --push_to_hub true --hub_model_id ID"),
    "hub_model_id": (_NONE, "push a checkpoint after training: vlft export --push_to_hub true --hub_model_id ID"),
    "use_ray": (FALSE, "no Ray; NPROC_PER_NODE, NNODES and NODE_RANK make vlft start torchrun"),
    "quant_method": (_NONE, _QUANT),
    "quant_bits": (_NONE, _QUANT),
    "bnb_": (_NONE, _QUANT),
    "hqq_axis": (_NONE, _QUANT),
    "tuner_backend": (frozenset({"peft"}), "LoRA is PEFT's (ms-swift's default backend); unsloth is not used"),
    "use_galore": (FALSE, _TUNERS),
    "lorap_lr_ratio": (_NONE, _TUNERS),
    **{prefix: (_NONE, _TUNERS) for prefix in ("adalora_", "adapter_", "boft_", "fourier_", "galore_", "lisa_",
                                               "llamapro_", "lora_ga_", "reft_", "vera_")},
    "swanlab_": (_NONE, "log with --report_to tensorboard (every run also writes logging.jsonl and plots)"),
    "adapters": (_NONE, "vlft sft trains new adapters: --resume_from_checkpoint CKPT continues a run, or merge "
                        "the adapter first (vlft export --merge_lora true) and train the merged model"),
    "resume_only_model": (FALSE, "--resume_from_checkpoint resumes the model, the optimizer and the data order "
                                 "together"),
    "predict_with_generate": (FALSE, "evaluation computes the loss; vlft infer --load_data_args true answers the "
                                     "val split"),
    "model_name": (_NONE, "it fills swift/self-cognition's rows in vlft sft and infer"),
    "model_author": (_NONE, "it fills swift/self-cognition's rows in vlft sft and infer"),
    "infer_backend": (frozenset({"transformers", "pt"}), _ENGINES + "; vlft deploy batches requests "
                                                                     "(--max_batch_size)"),
    "vllm_": (_NONE, _ENGINES),
    "sglang_": (_NONE, _ENGINES),
    "lmdeploy_": (_NONE, _ENGINES),
    "merge_lora": (FALSE, "merge after training: vlft export --adapters CKPT --merge_lora true"),
    "val_dataset_sample": (_NONE, "take N rows with --val_dataset 'PATH#N'"),
    "ssl_keyfile": (_NONE, "the server speaks plain HTTP: put a TLS proxy in front of it"),
    "ssl_certfile": (_NONE, "the server speaks plain HTTP: put a TLS proxy in front of it"),
    "safe_serialization": (TRUE, _SAFETENSORS),
    "to_ollama": (FALSE, "no Ollama export: vlft export --merge_lora true writes a plain HF model dir"),
    "mcore_adapter": (_NONE, _MEGATRON),
    # Flags of real `swift sft` scripts that ask for what vlft does anyway (or change nothing here), and the
    # features behind their other values.
    "task_type": (frozenset({"causal_lm"}), "vlft trains causal language modelling (causal_lm); sequence "
                                            "classification, embedding and reranker heads are not built in"),
    "num_labels": (_NONE, "vlft trains causal language modelling: no classification head"),
    "loss_type": (frozenset({"cross_entropy"}), "vlft trains the next-token cross-entropy (--loss_scale chooses "
                                                "the tokens)"),
    "label_names": (frozenset({"labels"}), "the batches' targets are `labels`"),
    "enable_channel_loss": (FALSE, "no per-channel loss: one loss over the trained tokens"),
    "padding_side": (frozenset({"right"}), "vlft pads training rows on the right (or packs them) and prompts for "
                                           "generation as the model needs"),
    "use_chat_template": (TRUE, "samples are rendered with the model's chat template"),
    "new_special_tokens": (_NONE, "export takes the tokens from the checkpoint's tokenizer (the run's "
                                  "--new_special_tokens)"),
    "check_model": (_ANY, "vlft checks nothing on the hub before loading"),
    "ignore_args_error": (FALSE, "vlft reports every flag it does not take: remove them"),
    "overwrite_output_dir": (_ANY, "each run writes a new --output_dir/v{N}-{time} (--add_version false: into "
                                   "--output_dir itself)"),
    "max_new_tokens": (_ANY, _NO_GENERATION),
    "acc_strategy": (_ANY, _NO_ACCURACY),
    "eval_use_evalscope": (FALSE, "evaluation computes the loss on --val_dataset"),
    "metric_for_best_model": (frozenset({"loss", "eval_loss"}), "evaluation computes the loss only; "
                                                                "--save_strategy best keeps the lowest eval loss"),
    "greater_is_better": (FALSE, "the best checkpoint has the lowest eval loss"),
    "load_best_model_at_end": (FALSE, "the run ends on its last step; --save_strategy best keeps the checkpoint "
                                      "of the lowest eval loss, which vlft infer or export take by path"),
    "save_safetensors": (TRUE, _SAFETENSORS),
    "lora_bias": (frozenset({"none"}), "LoRA trains no biases (add a module to --modules_to_save to train it "
                                       "whole)"),
    "init_weights": (TRUE, "LoRA starts from PEFT's default (A random, B zero)"),
    "dataset_shuffle": (TRUE, _SHUFFLED),
    "train_dataloader_shuffle": (TRUE, _SHUFFLED),
    "gradient_checkpointing_kwargs": (_JsonEqual({"use_reentrant": False}),
                                      "vlft's gradient checkpointing is torch's non-reentrant one"),
    "add_non_thinking_prefix": (TRUE, "vlft writes the empty <think> block where the chat template writes it (in "
                                      "every turn with --preserve_thinking true)"),
    "experts_impl": (frozenset({"grouped_mm"}), "MoE experts run as grouped GEMMs (LoRA on them per routed token "
                                                "group)"),
    "temperature": (_ANY, _NO_GENERATION),
    "logprobs": (FALSE, _NO_LOGPROBS),
    "top_logprobs": (_NONE, _NO_LOGPROBS),
    "write_batch_size": (_ANY, "vlft infer writes each answer as it is made"),
    "use_logits_to_keep": (FALSE, "--chunked_loss true computes the loss without a whole row's logits"),
    "val_dataset_shuffle": (FALSE, "the eval samples keep their order"),
    "logging_strategy": (frozenset({"steps"}), "the loss is logged every --logging_steps steps"),
    "run_name": (_ANY, "runs are named by their dir, OUTPUT_DIR/v{N}-{time}"),
    "group_by_length": (FALSE, "--packing true fills rows of --max_length from samples sorted by length"),
    "external_plugins": (_NONE, "vlft loads no plugins: losses, templates and datasets are built in"),
    "custom_register_path": (_NONE, "vlft loads no plugins: the model families (Qwen-VL, Qwen3.5) are built in"),
    "model_type": (_ANY, "vlft export reads the model's type from its config.json"),
    "template": (_ANY, "vlft export renders no chat"),
}


def parse_bool(text: str) -> bool:
    """swift-style booleans: true/false, 1/0, yes/no."""
    low = str(text).strip().lower()
    if low in TRUE:
        return True
    if low in FALSE:
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def _json_or_name(text: str) -> Any:
    """A JSON object, or (text not starting with `{`) a name kept as text: `--columns AI-ModelScope/LaTeX_OCR`
    applies a known dataset's column mapping (vlft/data/formats.py rename_columns)."""
    return json.loads(text) if text.lstrip().startswith("{") else text


def _converter(hint: Any):
    """(convert-one-string, nargs, choices) for a field's type hint."""
    origin = typing.get_origin(hint)
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and len(args) == 1:
        return _converter(args[0])
    if str in args and any(a is dict or typing.get_origin(a) is dict for a in args):  # a JSON object or a name
        return _json_or_name, None, None
    if origin is Literal:
        return str, None, list(typing.get_args(hint))
    if bool in args and len(args) == 2 and typing.get_origin(args[1 - args.index(bool)]) is Literal:
        words = typing.get_args(args[1 - args.index(bool)])  # true / false, or a word such as "auto"
        return (lambda text: text if text in words else parse_bool(text)), None, None
    if origin is list:
        return _converter(args[0])[0], "+", None
    if origin is dict or hint is dict:
        return json.loads, None, None
    if hint is bool:
        return parse_bool, None, None
    if hint in (int, float, str):
        return hint, None, None
    raise TypeError(f"unsupported argument type {hint}")


def _convert(name: str, convert, text: str, choices: list | None = None):
    if choices is not None and text not in choices:
        raise VlftError(f"--{name} {text!r}: choose from {', '.join(map(str, choices))}")
    try:
        return convert(text)
    except (ValueError, json.JSONDecodeError) as e:
        raise VlftError(f"--{name} {text!r}: {e}") from None


def _takes_bare_flag(hint: Any) -> bool:
    """A boolean field (possibly beside None or a word such as "auto"): `--flag` alone means true, as ms-swift's
    parser reads it."""
    return hint is bool or bool in typing.get_args(hint)


_FLAG = re.compile(r"--([A-Za-z0-9][A-Za-z0-9_-]*)(=.*)?", re.DOTALL)


def underscored(argv: list[str]) -> list[str]:
    """`--max-length` as `--max_length` (ms-swift takes both spellings). Only flag-shaped tokens change (a value
    such as `--- END` or `--a-b c` stays), and nothing after a bare `--`."""
    out = []
    for i, token in enumerate(argv):
        if token == "--":
            return out + argv[i:]
        flag = _FLAG.fullmatch(token)
        out.append(f"--{flag.group(1).replace('-', '_')}{flag.group(2) or ''}" if flag else token)
    return out


def build_parser(cls: type, prog: str, description: str | None = None) -> argparse.ArgumentParser:
    """An argparse parser with one `--name` per dataclass field (all strings; converted in parse_args)."""
    parser = argparse.ArgumentParser(prog=prog, description=description or (cls.__doc__ or "").strip(),
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        _, nargs, choices = _converter(hints[f.name])
        help_text = f.metadata.get("help", "")
        if choices:  # checked in parse_args, with the other problems
            help_text += f" {{{', '.join(map(str, choices))}}}"
        if "env" in f.metadata:
            help_text += f" [env: {f.metadata['env']}]"
        default = f.default if f.default is not dataclasses.MISSING else None
        bare = nargs is None and _takes_bare_flag(hints[f.name])
        arity = {"nargs": "?", "const": "true"} if bare else {"nargs": nargs}
        parser.add_argument(f"--{f.name}", **arity, default=argparse.SUPPRESS,
                            help=f"{help_text} (default: {default})" if help_text else None, metavar=f.name.upper())
    return parser


Refusals = Mapping[str, tuple[frozenset[str], str]]


def refusal(name: str, refused: Refusals = REFUSED) -> tuple[frozenset[str], str] | None:
    """The refused entry for an ms-swift flag (by name or by prefix), or None."""
    if name in refused:
        return refused[name]
    return next((entry for key, entry in refused.items() if key.endswith("_") and name.startswith(key)), None)


def leftover_problems(flags: list[str], leftovers: list[str], refused: Refusals = REFUSED) -> list[str]:
    """A sentence for each flag in argparse's leftovers that the command (taking `flags`) does not take; a
    refused flag whose values all ask for what vlft does anyway (`--use_liger_kernel false`) passes."""
    given: list[tuple[str, list[str]]] = []  # (flag, its values)
    loose: list[str] = []
    for token in leftovers:
        if token.startswith("--"):
            name, eq, value = token[2:].partition("=")
            given.append((name, [value] if eq else []))
        elif given:
            given[-1][1].append(token)
        else:
            loose.append(token)
    problems = [f"unexpected value(s) {' '.join(loose)}"] if loose else []
    for name, values in given:
        entry = refusal(name, refused)
        if entry is None:
            # Compared without the dashes every flag shares (with them, --ddp_backend is "near" --packing).
            near = difflib.get_close_matches(name.replace("-", "_"), flags, n=1)
            problems.append(f"unknown argument --{name}" + (f"; did you mean --{near[0]}?" if near else ""))
        elif any(v.strip().lower() not in entry[0] for v in values or ["true"]):  # a bare flag: true (ms-swift)
            problems.append(f"--{' '.join([name, *values])} is not supported: {entry[1]}")
    return problems


def model_kwargs_environ(cls: type, model_kwargs, problems: list[str]) -> dict[str, str]:
    """--model_kwargs (ms-swift: JSON of environment settings) as environment variables, each one that a field of
    `cls` reads."""
    if not model_kwargs:
        return {}
    if not isinstance(model_kwargs, dict):
        problems.append(f"--model_kwargs takes a JSON object, got {model_kwargs!r}")
        return {}
    names = sorted(f.metadata["env"] for f in dataclasses.fields(cls) if "env" in f.metadata)
    environ = {}
    for key, value in model_kwargs.items():
        if key.upper() not in names:
            problems.append(f"--model_kwargs: {key} is not a setting vlft reads; it reads {', '.join(names)}")
        else:
            environ[key.upper()] = json.dumps(value) if isinstance(value, (bool, dict, list)) else str(value)
    return environ


def parse_args(cls: type, argv: list[str], prog: str, environ: Mapping[str, str] | None = None):
    """Parse argv into an instance of the dataclass `cls`. One VlftError lists every flag the command does not
    take (unknown ones with the nearest flag of the command) and every value that does not convert."""
    environ = os.environ if environ is None else environ
    known, leftovers = build_parser(cls, prog).parse_known_args(underscored(argv))
    fields = dataclasses.fields(cls)
    # REFUSED, with the command's own refusals (a dataclass's `refused`, e.g. Megatron-SWIFT's flags)
    problems = leftover_problems([f.name for f in fields], leftovers, {**REFUSED, **getattr(cls, "refused", {})})
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}

    def convert(f: dataclasses.Field, name: str, raw) -> None:
        to_value, nargs, choices = _converter(hints[f.name])
        try:
            values[f.name] = ([_convert(name, to_value, r, choices) for r in raw] if nargs and isinstance(raw, list)
                              else _convert(name, to_value, raw, choices))
        except VlftError as e:
            problems.append(str(e))

    for f in fields:
        if f.name in vars(known):
            convert(f, f.name, vars(known)[f.name])
    environ = {**environ, **model_kwargs_environ(cls, values.get("model_kwargs"), problems)}
    for f in fields:
        if f.name not in values and "env" in f.metadata and environ.get(f.metadata["env"]) not in (None, ""):
            convert(f, f.metadata["env"], environ[f.metadata["env"]])
    if problems:  # with the values' own problems, so that one error lists them all
        from vlft.errors import ArgumentProblems

        try:
            cls(**values)
        except ArgumentProblems as e:
            problems += [p for p in e.problems if p not in problems]
    if len(problems) == 1:
        raise VlftError(f"{prog}: {problems[0]}")
    if problems:
        raise VlftError(f"{prog}: {len(problems)} problems with the arguments:\n" +
                        "\n".join(f"  {problem}" for problem in problems))
    return cls(**values)


def print_help_and_exit(parser: argparse.ArgumentParser) -> None:
    parser.print_help()
    sys.exit(0)
