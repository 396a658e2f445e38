"""ms-swift's flags (issue 21): docs/ms_swift.md lists every flag of vlft's argument dataclasses, every flag vlft
refuses and every default that differs from ms-swift 4.6's (written out below from its swift/arguments/*.py, the
ground truth the dataclasses are compared with); each newly taken flag reaches its effect; refused and unknown
flags are reported all at once, with what to use instead or the nearest flag of the command, exit code 2."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO
from vlft.arguments import DeployArguments, InferArguments, SftArguments
from vlft.cli.infer import StopWordsEngine, before_stop_words
from vlft.cli.main import main
from vlft.cli.parsing import REFUSED, parse_args
from vlft.errors import VlftError
from vlft.export.arguments import ExportArguments
from vlft.infer.protocol import (ChatCompletionResponse, ChatCompletionStreamResponse, ChatMessage, Choice,
                                 DeltaMessage, RequestConfig, StreamChoice, Usage)
from vlft.train.sft import trainer_arguments

DOC = REPO / "docs" / "ms_swift.md"
SFT = ["--model", "vlft/tiny-qwen3-vl", "--dataset", "train.jsonl"]


class Computed(str):
    """An ms-swift default worked out at run time (never equal to a fixed vlft default)."""


# ms-swift 4.6's default of each of its flags that vlft takes (swift/arguments/*.py at 3602360, and transformers'
# TrainingArguments under `swift sft`), as vlft's dataclasses are built below: without eval data, export merging
# "ckpt". `train_type` is ms-swift 3's name of `tuner_type`.
_TEMPLATE = {"system": None, "max_length": Computed("the model's max_model_len"), "truncation_strategy": "delete",
             "loss_scale": "default", "enable_thinking": None,
             "preserve_thinking": Computed("kept in training unless --loss_scale last_round"),
             "disable_ignore_empty_think": False, "new_special_tokens": [], "agent_template": None,
             "max_pixels": None, "model_type": None, "template": None, "model_revision": None, "use_hf": False,
             "hub_token": None, "model_kwargs": None, "seed": 42, "val_dataset": [],
             "torch_dtype": Computed("the checkpoint's dtype")}
MS_SWIFT = {
    "sft": {**_TEMPLATE, "split_dataset_ratio": 0.0, "columns": None, "dataset_num_proc": 1,
            "load_from_cache_file": False, "strict": False, "model_name": None, "model_author": None,
            "train_type": "lora", "tuner_type": "lora",
            "attn_impl": Computed("the checkpoint's; flash-attn for packing"), "padding_free": False,
            "packing": False, "packing_length": None, "sequence_parallel_size": 1, "num_train_epochs": 3.0, "max_steps": -1, "per_device_train_batch_size": 1,
            "per_device_eval_batch_size": 1, "gradient_accumulation_steps": Computed("ceil(16 / batch / GPUs)"),
            "learning_rate": 1e-4, "vit_lr": None, "aligner_lr": None, "weight_decay": 0.1, "max_grad_norm": 1.0,
            "warmup_ratio": 0.0, "warmup_steps": 0, "lr_scheduler_type": "cosine", "lr_scheduler_kwargs": None,
            "optim": None,  # both: transformers' default
            "adam_beta1": 0.9, "adam_beta2": 0.999, "adam_epsilon": 1e-8, "lora_rank": 8, "lora_alpha": 32,
            "lora_dropout": 0.05, "target_modules": ["all-linear"], "target_regex": None, "modules_to_save": [],
            "use_dora": False, "use_rslora": False, "quant_method": None, "quant_bits": None,
            "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True, "bnb_4bit_compute_dtype": None,
            "freeze_vit": True, "freeze_aligner": True, "freeze_llm": False,
            "router_aux_loss_coef": 0.0, "gradient_checkpointing": True, "vit_gradient_checkpointing": True,
            "torch_compile": False, "torch_compile_mode": None, "save_steps": 500, "save_strategy": "steps",
            "eval_steps": 500, "eval_strategy": "no", "save_total_limit": None, "logging_steps": 5,
            "logging_nan_inf_filter": True, "logging_first_step": False, "output_dir": Computed("output/<model name>"),
            "add_version": True,
            "deepspeed": None, "fsdp": None, "fsdp_config": None, "ddp_timeout": 18_000_000,
            "dataloader_num_workers": 1, "data_seed": 42,
            "resume_from_checkpoint": None, "report_to": ["tensorboard"],
            "bf16": Computed("from --torch_dtype"), "fp16": Computed("from --torch_dtype"), "lora_dtype": None,
            "neftune_noise_alpha": None, "save_only_model": False, "eval_on_start": False,
            "create_checkpoint_symlink": False,
            "logging_dir": Computed("OUTPUT_DIR/runs"), "ddp_find_unused_parameters": None,
            "torch_empty_cache_steps": None},
    "infer": {**_TEMPLATE, "stream": Computed("true when chatting"), "max_new_tokens": Computed("max_model_len"),
              "temperature": Computed("generation_config.json"), "top_p": Computed("generation_config.json"),
              "top_k": Computed("generation_config.json"),
              "repetition_penalty": Computed("generation_config.json"), "num_beams": 1, "load_data_args": False,
              "model_name": None, "model_author": None,
              "result_path": Computed("CKPT/infer_result/{time}.jsonl"), "max_batch_size": 1, "attn_impl": None,
              "stop_words": [], "merge_lora": False, "logprobs": False, "top_logprobs": None},
    "export": {"output_dir": "ckpt-merged", "torch_dtype": None, "model_revision": None, "use_hf": False, "push_to_hub": False,
               "hub_model_id": None, "hub_token": None, "hub_private_repo": False, "max_shard_size": "5GB",
               "to_mcore": False, "to_hf": False, "mcore_model": None, "tensor_model_parallel_size": 1,
               "pipeline_model_parallel_size": 1, "expert_model_parallel_size": 1, "expert_tensor_parallel_size": 1,
               "test_convert_precision": False},
}
MS_SWIFT["deploy"] = {**MS_SWIFT["infer"], "host": "0.0.0.0", "port": 8000, "api_key": None, "max_model_len": None,
                      "served_model_name": Computed("the model dir's last name")}
# vlft's dataclasses, built with what each command requires (those flags are not compared).
BUILT = {"sft": lambda: SftArguments(model="m", dataset=["d"]), "infer": lambda: InferArguments(model="m"),
         "deploy": lambda: DeployArguments(model="m"),
         "export": lambda: ExportArguments(adapters=["ckpt"], merge_lora=True)}
ALIASES = {"tuner_type": "train_type"}  # vlft's alias flag -> the field holding its value


def doc_flags(heading: str) -> set[str]:
    """The flags named in the first column of the table under `## heading` (`--prefix_*` as `prefix_*`)."""
    section = DOC.read_text().split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line.split(" | ")[0] for line in section.splitlines() if line.startswith("| `--")]
    return {name + star for row in rows for name, star in re.findall(r"`--([a-z0-9_]+)(\*?)`", row)}


def field_names(command: str) -> set[str]:
    return {f.name for f in dataclasses.fields(type(BUILT[command]()))}


def test_the_doc_lists_every_flag_of_every_command_under_the_right_table():
    takes, own = doc_flags("Flags vlft takes"), doc_flags("vlft's own flags")
    for command in BUILT:
        swift_named = set(MS_SWIFT[command]) | {"model", "dataset", "adapters", "merge_lora"}
        fields = field_names(command)
        assert fields & swift_named - takes == set(), f"{command}: ms-swift flags missing from 'Flags vlft takes'"
        assert fields - swift_named - own == set(), (f"{command}: flags that are not ms-swift's (add their ms-swift "
                                                     "default to MS_SWIFT if they are) missing from 'vlft's own "
                                                     "flags'")
    every = set().union(*(field_names(command) for command in BUILT))
    assert takes - every == set() and own - every == set(), "the doc lists flags no command takes"


def test_the_doc_lists_every_refused_flag():
    refused = doc_flags("ms-swift flags vlft refuses")
    assert {name + "*" if name.endswith("_") else name for name in REFUSED} - refused == set()


def test_the_doc_lists_exactly_the_defaults_that_differ_from_ms_swifts():
    differing = set()
    for command, swift in MS_SWIFT.items():
        built = BUILT[command]()
        assert set(swift) <= field_names(command), f"{command}: MS_SWIFT names flags vlft does not take"
        differing |= {flag for flag, default in swift.items()
                      if isinstance(default, Computed) or getattr(built, ALIASES.get(flag, flag)) != default}
    assert differing == doc_flags("Defaults that differ from ms-swift's")


def made(tmp_path, *argv: str, has_eval: bool = False):
    args = parse_args(SftArguments, [*SFT, *argv], "vlft sft")
    return trainer_arguments(args, tmp_path, None, torch.float32, cuda=False, has_eval=has_eval)


def test_training_flags_reach_transformers_training_arguments(tmp_path):
    made_ = made(tmp_path, "--warmup_steps", "30", "--save_strategy", "epoch", "--optim", "adafactor",
                 "--lr_scheduler_type", "cosine_with_min_lr", "--lr_scheduler_kwargs", '{"min_lr": 1e-6}',
                 "--data_seed", "7", "--adam_beta2", "0.95", "--ddp_timeout", "600", "--split_dataset_ratio", "0.1",
                 has_eval=True)
    assert made_.get_warmup_steps(1000) == 30 and made_.save_strategy == "epoch" and made_.optim == "adafactor"
    assert made_.eval_strategy == "epoch"  # as the save strategy (ms-swift)
    assert made_.lr_scheduler_kwargs == {"min_lr": 1e-6} and made_.adam_beta2 == 0.95
    assert (made_.data_seed, made_.seed, made_.ddp_timeout) == (7, 42, 600)
    assert made(tmp_path, "--warmup_ratio", "0.1").get_warmup_steps(1000) == 100
    assert made(tmp_path, "--warmup_steps", "0.2").get_warmup_steps(1000) == 200  # below 1: a share
    plain = made(tmp_path)
    assert plain.data_seed == 42 and plain.eval_strategy == "no" and plain.ddp_timeout == 18_000_000
    assert made(tmp_path, "--eval_strategy", "steps", "--eval_steps", "7", "--val_dataset", "v.jsonl",
                has_eval=True).eval_steps == 7


def test_eval_strategy_no_holds_nothing_out_and_bad_combinations_are_refused(tmp_path):
    assert parse_args(SftArguments, [*SFT, "--split_dataset_ratio", "0.1", "--eval_strategy", "no"],
                      "t").split_dataset_ratio == 0.0
    for argv, message in [(["--warmup_ratio", "0.1", "--warmup_steps", "10"], "give one of them"),
                          (["--save_strategy", "best"], "needs eval data"),
                          (["--lr_scheduler_kwargs", "[1]"], "takes a JSON object"),
                          (["--target_regex", "(q_proj"], "--target_regex '(q_proj'")]:
        with pytest.raises(VlftError, match=re.escape(message)):
            parse_args(SftArguments, [*SFT, *argv], "t")
    with pytest.raises(VlftError, match="adamw_nonsense is not a valid"):
        made(tmp_path, "--optim", "adamw_nonsense")


def test_target_regex_reaches_peft_target_modules(tiny_model_dir):
    from vlft.families import get_family
    from vlft.train.model import load_model
    from vlft.train.tuners import prepare_trainable

    regex = r"model\.language_model\.layers\.\d+\.self_attn\.(q|v)_proj"
    args = parse_args(SftArguments, [*SFT, "--target_regex", regex], "t")
    model = load_model(tiny_model_dir("qwen3_vl"), torch.float32, "sdpa")
    expected = {name for name, module in model.named_modules()
                if isinstance(module, torch.nn.Linear) and re.fullmatch(regex, name)}
    model = prepare_trainable(model, get_family("qwen3_vl"), args)
    adapted = {name.removeprefix("base_model.model.") for name, module in model.named_modules()
               if hasattr(module, "lora_A")}
    assert len(expected) >= 2 and adapted == expected
    assert re.fullmatch(model.peft_config["default"].target_modules, "model.language_model.layers.0.self_attn.q_proj")


def test_target_regex_matching_nothing_names_the_models_linears(tiny_model_dir):
    from vlft.families import get_family
    from vlft.train.model import load_model
    from vlft.train.tuners import prepare_trainable

    args = parse_args(SftArguments, [*SFT, "--target_regex", r"layers\.\d+\.attn\.q_proj"], "t")  # not a full name
    model = load_model(tiny_model_dir("qwen3_vl"), torch.float32, "sdpa")
    with pytest.raises(VlftError, match=r"matches no module's full name \(the model's \d+ linears are named like "
                                        r"model\.visual\.blocks\.0\.attn\.qkv"):
        prepare_trainable(model, get_family("qwen3_vl"), args)


def test_system_file_is_read_and_a_typed_newline_is_a_line_break(tmp_path):
    prompt = tmp_path / "system.txt"
    prompt.write_text("You are a careful reader.\nAnswer briefly.", encoding="utf-8")
    assert parse_args(SftArguments, [*SFT, "--system", str(prompt)], "t").system == prompt.read_text()
    assert parse_args(InferArguments, ["--model", "m", "--system", r"a\nb"], "t").system == "a\nb"
    with pytest.raises(VlftError, match="no such file"):
        parse_args(SftArguments, [*SFT, "--system", str(tmp_path / "missing.txt")], "t")


def test_model_kwargs_are_environment_settings_below_the_command_line():
    args = parse_args(SftArguments, [*SFT, "--model_kwargs", '{"fps_max_frames": 16, "MAX_PIXELS": 1000}',
                                     "--max_pixels", "5000"], "t", environ={"FPS_MAX_FRAMES": "8"})
    assert (args.fps_max_frames, args.max_pixels) == (16, 5000)
    with pytest.raises(VlftError, match="--model_kwargs: foo is not a setting vlft reads; it reads FPS, "):
        parse_args(SftArguments, [*SFT, "--model_kwargs", '{"foo": 1}'], "t")


def test_infer_attn_impl_takes_ms_swifts_names_and_reaches_the_loaded_model(tiny_model_dir):
    assert InferArguments(model="m", attn_impl="flash_attn").attn_impl == "flash_attention_2"
    with pytest.raises(VlftError, match="varlen is vlft's kernel for padding-free training rows"):
        InferArguments(model="m", attn_impl="varlen")
    from vlft.infer.engine import InferEngine

    engine = InferEngine(args=parse_args(InferArguments, ["--model", str(tiny_model_dir("qwen3_vl")),
                                                          "--attn_impl", "eager"], "vlft infer"))
    assert engine.model.config._attn_implementation == "eager"


def test_stop_words_end_answers_whole_and_streamed():
    assert before_stop_words("It is red.\nObservation: x", ["Observation:"]) == ("It is red.\n", True)
    assert before_stop_words("It is red. Obs", ["Observation:"], final=False) == ("It is red. ", False)
    assert before_stop_words("It is red. Obs", ["Observation:"]) == ("It is red. Obs", False)

    class Engine:  # answers "red. Obs" "ervation: no" "pe", whole or in those pieces
        pieces = ["red. Obs", "ervation: no", "pe"]

        def infer(self, requests, config):
            assert config.stop == ["Observation:"] or config.stop == ["zzz"]  # generation ends there too
            if not config.stream:
                return [ChatCompletionResponse("m", [Choice(0, ChatMessage("assistant", "".join(self.pieces)),
                                                            "length")], Usage(1, 3)) for _ in requests]
            chunks = [ChatCompletionStreamResponse("m", [StreamChoice(0, DeltaMessage("assistant", p))], "i")
                      for p in self.pieces]
            return [iter(chunks + [ChatCompletionStreamResponse("m", [StreamChoice(0, DeltaMessage(), "stop")],
                                                                "i")])]

    engine = StopWordsEngine(Engine(), ["Observation:"])
    whole = engine.infer([object()], RequestConfig())[0].choices[0]
    assert (whole.message.content, whole.finish_reason) == ("red. ", "stop")
    shown = [c.choices[0].delta.content for c in engine.infer([object()], RequestConfig(stream=True))[0]]
    assert shown == ["red. ", None]  # "Obs" held back until it turned out to begin the stop word
    assert "".join(c.choices[0].delta.content or "" for c in StopWordsEngine(Engine(), ["zzz"]).infer(
        [object()], RequestConfig(stream=True))[0]) == "red. Observation: nope"


def test_stop_words_reach_vlft_infer(checkpoint, tmp_path):
    import json

    def responses(*argv: str) -> list[str]:
        result = tmp_path / "result.jsonl"
        assert main(["infer", "--adapters", str(checkpoint), "--load_data_args", "true", "--max_new_tokens", "8",
                     "--result_path", str(result), *argv]) == 0
        return [json.loads(line)["response"] for line in result.read_text().splitlines()]

    plain = responses()
    word = next((r[len(r) // 2:len(r) // 2 + 2] for r in plain if len(r.strip()) >= 4), None)
    if word is None:
        pytest.skip(f"the tiny model's answers are too short to cut: {plain}")
    assert responses("--stop_words", word) == [r[:r.find(word)] if word in r else r for r in plain]


def test_stop_words_end_generation_early(checkpoint):
    """Generation stops at the token that completes a stop word (not only the shown text): fewer tokens made."""
    from vlft.arguments import InferArguments
    from vlft.infer.engine import InferEngine
    from vlft.infer.protocol import InferRequest

    engine = InferEngine(args=InferArguments(adapters=[str(checkpoint)]))
    request = InferRequest(messages=[{"role": "user", "content": "Where is the capital of Zhejiang?"}])
    [plain] = engine.infer([request], RequestConfig(max_tokens=16))
    text = plain.choices[0].message.content
    if plain.usage.completion_tokens < 6 or len(text) < 8:
        pytest.skip(f"the tiny model's answer is too short to cut: {text!r}")
    word = text[len(text) // 3:len(text) // 3 + 2]
    [stopped] = StopWordsEngine(engine, [word]).infer([request], RequestConfig(max_tokens=16))
    assert stopped.choices[0].message.content == text[:text.find(word)]
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.usage.completion_tokens < plain.usage.completion_tokens


def test_served_model_name_names_the_model_the_server_lists(monkeypatch, capsys):
    import vlft.infer.engine
    import vlft.infer.server

    class Engine:
        def __init__(self, args):
            self.model_name = args.model

    class Server:
        server_address = ("127.0.0.1", 8123)

        def serve_forever(self):
            raise KeyboardInterrupt

        def server_close(self):
            pass

    served = []
    monkeypatch.setattr(vlft.infer.engine, "InferEngine", Engine)
    monkeypatch.setattr(vlft.infer.server, "make_server", lambda engine, *a, **k: served.append(engine) or Server())
    assert main(["deploy", "--model", "some/dir", "--served_model_name", "qwen-vl-ft"]) == 0
    assert served[0].model_name == "qwen-vl-ft" and "serving qwen-vl-ft at" in capsys.readouterr().out


@pytest.mark.parametrize("command, argv, messages", [
    ("sft", [*SFT, "--use_liger_kernel", "true", "--streaming", "true", "--device_map", "auto",
             "--bnb_4bit_quant_storage", "bfloat16", "--lora_rnak", "8", "--ddp_backend", "nccl", "--train_type",
             "qlora"],
     ["--use_liger_kernel true is not supported: Liger's kernels are not used; --chunked_loss true",
      "--streaming true is not supported: every line is encoded once before training",
      "--device_map auto is not supported: --deepspeed zero3",
      "--bnb_4bit_quant_storage bfloat16 is not supported: vlft quantizes only to train QLoRA",
      "unknown argument --lora_rnak; did you mean --lora_rank?",
      "unknown argument --ddp_backend\n",  # no false suggestion (compared with the dashes: "--packing")
      "--train_type 'qlora': choose from lora, full"]),
    ("infer", ["--model", "m", "--infer_backend", "vllm", "--val_dataset_sample", "5", "--vllm_gpu_memory_utilization",
               "0.9", "--max_new_token", "8"],
     ["--infer_backend vllm is not supported: vlft generates with transformers",
      "--val_dataset_sample 5 is not supported: take N rows with --val_dataset 'PATH#N'",
      "--vllm_gpu_memory_utilization 0.9 is not supported",
      "unknown argument --max_new_token; did you mean --max_new_tokens?"]),
    ("deploy", ["--model", "m", "--infer_backend", "sglang", "--ssl_keyfile", "k.pem", "--served_model_nam", "x"],
     ["--infer_backend sglang is not supported", "--ssl_keyfile k.pem is not supported: the server speaks plain HTTP",
      "unknown argument --served_model_nam; did you mean --served_model_name?"]),
    ("export", ["--adapters", "ckpt", "--merge_lora", "true", "--to_ollama", "true", "--quant_method", "awq",
                "--fp16", "true"],
     ["--to_ollama true is not supported", "--quant_method awq is not supported",
      "--fp16 true is not supported: --torch_dtype float16"]),
])
def test_refused_and_unknown_flags_are_all_reported_at_once(command, argv, messages, capsys, monkeypatch):
    import vlft.infer.engine

    monkeypatch.setattr(vlft.infer.engine, "InferEngine", None)  # nothing may load
    assert main([command, *argv]) == 2
    err = capsys.readouterr().err
    assert f"{len(messages)} problems with the arguments" in err and "Traceback" not in err
    for message in messages:
        assert message in err + "\n"


def test_refused_flags_asking_for_what_vlft_does_pass():
    parse_args(InferArguments, ["--model", "m", "--infer_backend", "pt"], "t")
    parse_args(DeployArguments, ["--model", "m", "--infer_backend", "transformers"], "t")
    args = parse_args(SftArguments, [*SFT, "--use_liger_kernel", "false", "--streaming", "false", "--tuner_backend",
                                     "peft", "--sequence_parallel_size", "1"], "t")
    assert not hasattr(args, "use_liger_kernel")
    with pytest.raises(VlftError, match="--stop_words is not supported by vlft deploy"):
        parse_args(DeployArguments, ["--model", "m", "--stop_words", "Observation:"], "t")


def test_the_seed_guides_command_flags_are_all_taken():
    """Every flag of the ms-swift Qwen3-VL guide's `swift sft` / `swift infer` commands (seed 001) is a flag of the
    command (its `swift export` commands convert to and from Megatron-Core, which vlft refuses)."""
    guide = REPO.parent / "shared" / "seeds" / "001_d8b2c31d2655d5e0.txt"
    if not guide.is_file():
        pytest.skip("seed documents not in this checkout")
    commands = re.findall(r"swift (sft|infer)\s*\\\n(.*?)(?:```|\n\n)", guide.read_text(), re.S)
    classes = {"sft": SftArguments, "infer": InferArguments}
    for command, body in commands:
        flags = sorted(set(re.findall(r"--([a-z0-9_]+)", body)))
        fields = {f.name for f in dataclasses.fields(classes[command])}
        assert [flag for flag in flags if flag not in fields] == [], command
    assert commands


# Flags of `swift sft` scripts found in public repositories (Qwen-VL and Qwen3.5 fine-tuning), each asking for what
# vlft does anyway: a command that carries them runs.
REAL_SCRIPT_FLAGS = ["--task_type", "causal_lm", "--label_names", "labels", "--enable_channel_loss", "false",
                     "--padding_side", "right", "--use_chat_template", "true", "--check_model", "false",
                     "--ignore_args_error", "False", "--overwrite_output_dir", "true", "--max_new_tokens", "4096",
                     "--acc_strategy", "token", "--eval_use_evalscope", "false", "--metric_for_best_model", "loss",
                     "--greater_is_better", "false", "--load_best_model_at_end", "false", "--save_safetensors", "true",
                     "--lora_bias", "none", "--init_weights", "true", "--dataset_shuffle", "true",
                     "--train_dataloader_shuffle", "true", "--gradient_checkpointing_kwargs",
                     '{ "use_reentrant":false }', "--bf16", "true", "--fp16", "false", "--save_safetensors",
                     "--add_non_thinking_prefix", "true", "--experts_impl", "grouped_mm", "--temperature", "0",
                     "--use_logits_to_keep", "false", "--val_dataset_shuffle", "false", "--logging_strategy", "steps",
                     "--run_name", "exp1", "--group_by_length", "false", "--loss_type", "cross_entropy"]


def test_flags_of_real_swift_scripts_that_ask_for_what_vlft_does_pass():
    args = parse_args(SftArguments, [*SFT, *REAL_SCRIPT_FLAGS], "vlft sft")
    assert args.torch_dtype == "bfloat16"  # --bf16 true names the weights' dtype


@pytest.mark.parametrize("argv, message", [
    (["--task_type", "embedding"], "--task_type embedding is not supported: vlft trains causal language modelling"),
    (["--metric_for_best_model", "eval_token_acc"], "evaluation computes the loss only"),
    (["--greater_is_better", "true"], "the best checkpoint has the lowest eval loss"),
    (["--gradient_checkpointing_kwargs", '{"use_reentrant": true}'], "torch's non-reentrant one"),
    (["--lora_bias", "all"], "LoRA trains no biases"),
    (["--bf16", "true", "--torch_dtype", "float32"], "--bf16 true with --torch_dtype float32: vlft computes in the "
                                                     "weights' dtype"),
    (["--bf16", "false"], "--bf16 false with --torch_dtype unset (bfloat16 on GPU)"),
    (["--fp16", "false", "--torch_dtype", "float16"], "--fp16 false with --torch_dtype float16"),
    (["--bf16", "true", "--fp16", "true"], "--bf16 true and --fp16 true: choose one"),
    (["--eval_on_start", "true"], "--eval_on_start true needs evaluation"),
    (["--lora_dtype", "bfloat16", "--train_type", "full"], "no LoRA to cast"),
    (["--lora_dtype", "float16"], "the float16 loss scaler cannot unscale float16 gradients"),
    (["--lora_dtype", "bfloat16", "--deepspeed", "zero2"], "the engine sets the trained parameters' dtype itself"),
    (["--lora_dtype", "float32", "--fsdp", "fsdp2"], "the engine sets the trained parameters' dtype itself"),
    (["--enable_channel_loss"], "--enable_channel_loss is not supported"),  # bare: true, as ms-swift reads it
    (["--external_plugins", "plugin.py"], "vlft loads no plugins"),
    (["--experts_impl", "eager"], "MoE experts run as grouped GEMMs"),
    (["--group_by_length", "true"], "--packing true fills rows of --max_length from samples sorted by length"),
    (["--quant_bits", "4"], "--quant_bits 4 needs --quant_method bnb (ms-swift would train unquantized LoRA)"),
    (["--neftune_noise_alpha", "-1"], "--neftune_noise_alpha must be >= 0"),
    (["--save_steps", "2.5"], "--save_steps 2.5: a whole number of steps, or below 1 a share of the run's steps"),
    (["--logging_steps", "0"], "--logging_steps must be positive"),
])
def test_swift_flags_vlft_cannot_follow_are_refused_with_the_reason(argv, message):
    with pytest.raises(VlftError, match=re.escape(message)):
        parse_args(SftArguments, [*SFT, *argv], "vlft sft")


@pytest.mark.parametrize("argv, dtype", [(["--fp16", "true"], "float16"), (["--fp16", "false", "--bf16", "true"],
                                                                          "bfloat16"),
                                        (["--bf16", "false", "--torch_dtype", "float32"], "float32"),
                                        (["--fp16", "false", "--torch_dtype", "bfloat16"], "bfloat16")])
def test_bf16_and_fp16_name_the_weights_dtype(argv, dtype):
    assert parse_args(SftArguments, [*SFT, *argv], "vlft sft").torch_dtype == dtype


def test_trainer_flags_of_swift_scripts_reach_transformers(tmp_path):
    from vlft.train.callbacks import tensorboard_callbacks

    made_ = made(tmp_path, "--save_only_model", "true", "--neftune_noise_alpha", "5", "--torch_empty_cache_steps",
                 "10", "--ddp_find_unused_parameters", "false", "--eval_on_start", "true", "--val_dataset", "v.jsonl",
                 has_eval=True)
    assert made_.save_only_model and made_.neftune_noise_alpha == 5 and made_.torch_empty_cache_steps == 10
    assert made_.ddp_find_unused_parameters is False and made_.eval_on_start
    plain = made(tmp_path, "--neftune_noise_alpha", "0")
    assert plain.neftune_noise_alpha is None and not plain.save_only_model  # 0: no hook at all
    assert plain.report_to == ["tensorboard"] and tensorboard_callbacks(["tensorboard"], None) == []
    logged = made(tmp_path, "--logging_dir", str(tmp_path / "tb"))
    assert logged.report_to == []  # vlft's own callback writes there instead
    (callback,) = tensorboard_callbacks(["tensorboard"], str(tmp_path / "tb"))
    assert callback.logging_dir == str(tmp_path / "tb")
    assert tensorboard_callbacks(["none"], str(tmp_path / "tb")) == []
    (every,) = tensorboard_callbacks(["all"], str(tmp_path / "tb"))  # `all` holds tensorboard where installed
    assert "tensorboard" not in made(tmp_path, "--report_to", "all", "--logging_dir", str(tmp_path)).report_to


def test_neftune_save_only_model_logging_dir_and_links_through_vlft_sft(checkpoint, tmp_path, capsys):
    """The conftest checkpoint's run again with NEFTune noise: another loss (the run is otherwise seeded and
    deterministic); its checkpoints hold the adapter alone and do not resume; TensorBoard writes to --logging_dir;
    `last` and `best` link to the checkpoints (one, evaluated once: both the last)."""
    import json

    out, board = tmp_path / "out", tmp_path / "board"
    assert main(["sft", "--model", "vlft/tiny-qwen3-vl", "--dataset", str(REPO / "examples/data/train.jsonl"),
                 "--split_dataset_ratio", "0.3", "--max_steps", "2", "--learning_rate", "1e-2",
                 "--image_max_token_num", "16", "--image_min_token_num", "4", "--report_to", "tensorboard",
                 "--logging_dir", str(board), "--neftune_noise_alpha", "5", "--save_only_model", "true",
                 "--create_checkpoint_symlink", "--output_dir", str(out)]) == 0

    def last_loss(run_dir):
        logs = [json.loads(line) for line in (run_dir / "logging.jsonl").read_text().splitlines()]
        return [log["loss"] for log in logs if "loss" in log][-1]

    (run_dir,) = out.iterdir()
    saved = run_dir / "checkpoint-2"
    assert abs(last_loss(run_dir) - last_loss(checkpoint.parent)) > 1e-4
    assert (saved / "adapter_model.safetensors").is_file() and not (saved / "optimizer.pt").exists()
    assert list(board.glob("events.out.tfevents.*")) and not (run_dir / "runs").exists()
    assert [(run_dir / name).resolve() for name in ("last", "best")] == [saved.resolve()] * 2
    assert (run_dir / "last").readlink() == Path("checkpoint-2")  # by name: the run dir can move
    assert main(["sft", "--model", "vlft/tiny-qwen3-vl", "--dataset", str(REPO / "examples/data/train.jsonl"),
                 "--max_steps", "3", "--report_to", "none", "--output_dir", str(out),
                 "--resume_from_checkpoint", str(saved)]) == 2
    assert ("optimizer.pt: not saved: the run wrote its checkpoints with --save_only_model true"
            in capsys.readouterr().err)


def test_float16_training_is_refused_on_the_cpu(capsys, tmp_path):
    """On the CPU the Trainer runs no float16 autocast, so float16 weights would meet LoRA's float32 adapters (a
    dtype error at the first step): refused before anything loads."""
    assert main(["sft", "--model", "vlft/tiny-qwen3-vl", "--dataset", str(REPO / "examples/data/train.jsonl"),
                 "--fp16", "true", "--report_to", "none", "--output_dir", str(tmp_path)]) == 2
    assert "--torch_dtype float16 trains on a GPU only" in capsys.readouterr().err


def test_bare_boolean_flags_and_dashed_spellings_read_as_ms_swift_reads_them(tmp_path):
    """`--flag` alone is true for a boolean (transformers' HfArgumentParser under ms-swift), and `--max-length` is
    `--max_length`; a value keeps its dashes."""
    args = parse_args(SftArguments, [*SFT, "--save_only_model", "--packing", "--max-length", "64",
                                     "--gradient_checkpointing", "--output-dir", "runs/a-b"], "vlft sft")
    assert args.save_only_model and args.packing and args.gradient_checkpointing is True
    assert (args.max_length, args.output_dir) == (64, "runs/a-b")
    assert made(tmp_path, "--logging_first_step").logging_first_step
    export = parse_args(ExportArguments, ["--adapters", "ckpt", "--merge_lora", "--model_type", "qwen2_5_vl",
                                          "--template", "qwen2_5_vl"], "vlft export")
    assert export.merge_lora


def test_infer_merge_lora_writes_the_merged_model_that_answers_as_the_adapter(checkpoint, tmp_path, capsys):
    """`vlft infer --adapters CKPT --merge_lora true` (ms-swift's): CKPT-merged is written (and kept on a second
    run), and the merged model answers the run's val split as the adapter does (greedy)."""
    import json
    import shutil

    run = shutil.copytree(checkpoint.parent, tmp_path / "run")  # the run dir: args.json, val_dataset.jsonl
    adapter = run / checkpoint.name

    def responses(*argv: str) -> list[str]:
        result = tmp_path / "result.jsonl"
        assert main(["infer", "--max_new_tokens", "6", "--result_path", str(result), *argv]) == 0
        return [json.loads(line)["response"] for line in result.read_text().splitlines()]

    from_adapter = responses("--adapters", str(adapter), "--load_data_args", "true", "--merge_lora", "true")
    merged = run / f"{checkpoint.name}-merged"
    assert (merged / "config.json").is_file() and list(merged.glob("*.safetensors"))
    # the run's image settings, which --load_data_args took from its args.json
    assert responses("--model", str(merged), "--val_dataset", str(run / "val_dataset.jsonl"), "--image_max_token_num",
                     "16", "--image_min_token_num", "4") == from_adapter
    responses("--adapters", str(adapter), "--load_data_args", "true", "--merge_lora", "true")
    assert "is there already; kept" in capsys.readouterr().out
    with pytest.raises(VlftError, match="--merge_lora true merges one adapter checkpoint"):
        parse_args(InferArguments, ["--model", "m", "--merge_lora", "true"], "vlft infer")


def test_values_shaped_like_flags_keep_their_dashes():
    args = parse_args(InferArguments, ["--model", "m", "--stop_words", "--- END", "--system", "--a-b c",
                                       "--max-new-tokens", "4"], "vlft infer")
    assert args.stop_words == ["--- END"] and args.system == "--a-b c" and args.max_new_tokens == 4


def test_the_merged_dir_goes_beside_the_adapter_under_its_own_name(tmp_path, monkeypatch):
    from vlft.export.arguments import merged_dir_of

    (tmp_path / "run" / "checkpoint-5").mkdir(parents=True)
    (tmp_path / "run" / "last").symlink_to("checkpoint-5")
    monkeypatch.chdir(tmp_path / "run" / "checkpoint-5")
    assert merged_dir_of(".") == tmp_path / "run" / "checkpoint-5-merged"
    assert merged_dir_of("../checkpoint-5/") == Path("../checkpoint-5-merged")
    assert merged_dir_of("../last") == Path("../last-merged")  # a link's own name, as ms-swift names it
    assert merged_dir_of("..") == tmp_path / "run-merged"
    assert ExportArguments(adapters=["."], merge_lora=True).output_dir == str(tmp_path / "run" / "checkpoint-5-merged")


def test_step_intervals_below_one_are_shares_of_the_run(tmp_path):
    """--save_steps 0.5 --logging_steps 0.25 (transformers' reading, which ms-swift passes on): over 4 steps,
    checkpoints at steps 2 and 4 and a loss logged at every step; whole numbers stay ints."""
    import json

    assert parse_args(SftArguments, [*SFT, "--save_steps", "50"], "vlft sft").save_steps == 50
    out = tmp_path / "out"
    assert main(["sft", "--model", "vlft/tiny-qwen3-vl", "--dataset", str(REPO / "examples/data/train.jsonl"),
                 "--max_steps", "4", "--save_steps", "0.5", "--logging_steps", "0.25", "--image_max_token_num", "16",
                 "--image_min_token_num", "4", "--report_to", "none", "--output_dir", str(out)]) == 0
    (run_dir,) = out.iterdir()
    assert sorted(p.name for p in run_dir.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    logs = [json.loads(line) for line in (run_dir / "logging.jsonl").read_text().splitlines()]
    assert [log["step"] for log in logs if "loss" in log] == [1, 2, 3, 4]


def test_packing_length_is_the_row_length_and_max_length_still_cuts_samples():
    args = parse_args(SftArguments, [*SFT, "--packing", "true", "--max_length", "2048", "--packing_length", "8192"], "t")
    assert (args.max_length, args.row_length) == (2048, 8192)
    alone = parse_args(SftArguments, [*SFT, "--packing", "true", "--packing_length", "4096"], "t")
    assert (alone.max_length, alone.row_length) == (4096, 4096)  # no sample can be longer than a row
    assert parse_args(SftArguments, [*SFT, "--packing", "true", "--max_length", "512"], "t").row_length == 512


@pytest.mark.parametrize("argv, message", [
    (["--packing_length", "4096"], "--packing_length 4096 is the length of packed rows: add --packing true"),
    (["--packing", "true", "--max_length", "4096", "--packing_length", "1024"],
     "--packing_length 1024 is below --max_length 4096"),
])
def test_packing_length_problems(argv, message):
    with pytest.raises(VlftError, match=re.escape(message)):
        parse_args(SftArguments, [*SFT, *argv], "t")

