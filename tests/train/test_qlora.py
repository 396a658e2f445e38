"""QLoRA (`vlft sft --quant_method bnb --quant_bits 4`, vlft/train/quantization.py) on CPU, through bitsandbytes'
CPU backend for 4-bit weights (bitsandbytes >= 0.46). The family's LLM linears load as 4-bit weights while its
vision tower, aligner and output head keep their dtype (checked against modules.py's part of each module); the
first step's loss is the loss of the base with its LLM weights rounded to nf4 by bitsandbytes' own quantize /
dequantize functions (not the unquantized base's); the loss falls; the adapter answers in `vlft infer`; `vlft
export --merge_lora` merges it onto the unquantized base, each weight base + alpha / r * B @ A in float64. Bad
input is one VlftError before anything loads, bitsandbytes installed or not."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from vlft.arguments import SftArguments
from vlft.cli.main import main
from vlft.cli.parsing import parse_args
from vlft.data.encode import IGNORE_INDEX
from vlft.errors import VlftError
from vlft.families import get_family
from vlft.train.modules import module_part
from vlft.train.quantization import (BITSANDBYTES_MIN_VERSION, Bnb4bit, bnb_config, installed_bitsandbytes,
                                     quantization_run_problems)
from vlft.train.sft import check_run_arguments

needs_bitsandbytes = pytest.mark.skipif(installed_bitsandbytes() is None, reason="needs bitsandbytes (vlft[qlora])")
SFT = ["--model", "vlft/tiny-qwen3-vl", "--dataset", "train.jsonl"]
QLORA = ["--quant_method", "bnb", "--quant_bits", "4"]
MESSAGES = [{"role": "user", "content": "Where is the capital of Zhejiang?"},
            {"role": "assistant", "content": "Hangzhou. It sits on the West Lake, south of Shanghai."}]
STEPS, RANK, ALPHA = 6, 8, 32


@needs_bitsandbytes
@pytest.mark.parametrize("family_name", ["qwen3_vl", "qwen3_5_moe"])
def test_llm_linears_load_in_4bit_and_the_vision_side_keeps_its_dtype(family_name, tiny_model_dir):
    import bitsandbytes as bnb
    from peft.tuners.lora.bnb import Linear4bit as LoraLinear4bit

    from vlft.model.loading import load_pretrained
    from vlft.train.model import load_model
    from vlft.train.tuners import count_parameters, prepare_trainable

    family = get_family(family_name)
    settings = Bnb4bit("nf4", True, torch.bfloat16)
    model = load_model(tiny_model_dir(family_name), torch.bfloat16, "sdpa", bnb_config(settings, family))
    linears = {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    kept = {n for n in linears if module_part(n, family) in ("vit", "aligner") or n == family.modules.lm_head
            or n.endswith(family.modules.routers)}
    assert any(module_part(n, family) == "aligner" for n in kept) and any(module_part(n, family) == "vit" for n in kept)
    for name in kept:
        assert type(linears[name]) is torch.nn.Linear and linears[name].weight.dtype == torch.bfloat16, name
    quantized = set(linears) - kept
    assert quantized and all(module_part(n, family) == "llm" for n in quantized)
    assert all(isinstance(linears[n], bnb.nn.Linear4bit) and linears[n].weight.dtype == torch.uint8
               for n in quantized)
    # counted as the unquantized model's parameters, not as bitsandbytes' packed bytes
    plain = load_pretrained(tiny_model_dir(family_name), torch.bfloat16)
    assert count_parameters(model)[1] == sum(p.numel() for p in plain.parameters())
    # LoRA on them is PEFT's bitsandbytes layer, nothing else trains
    lora = SimpleNamespace(train_type="lora", freeze_vit=True, freeze_aligner=True, freeze_llm=False,
                           target_modules=["all-linear"], lora_rank=4, lora_alpha=8, lora_dropout=0.0, use_dora=False,
                           use_rslora=False, modules_to_save=[], freeze_router=True)
    model = prepare_trainable(model, family, lora)
    adapted = [m for m in model.modules() if isinstance(m, LoraLinear4bit)]
    assert len(adapted) == len(quantized)
    assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)


@pytest.fixture(scope="module")
def qlora_run(tmp_path_factory, vlft_cache) -> Path:
    """A run of `vlft sft` QLoRA on one text sample, STEPS steps at lr 1e-2, every step logged."""
    if installed_bitsandbytes() is None:
        pytest.skip("needs bitsandbytes (vlft[qlora])")
    data = tmp_path_factory.mktemp("qlora-data") / "one.jsonl"
    data.write_text(json.dumps({"messages": MESSAGES}) + "\n")
    out = tmp_path_factory.mktemp("qlora-run")
    assert main(["sft", "--model", "vlft/tiny-qwen3-vl", "--dataset", str(data), *QLORA, "--max_steps", str(STEPS),
                 "--learning_rate", "1e-2", "--logging_steps", "1", "--lora_rank", str(RANK), "--lora_alpha",
                 str(ALPHA), "--save_strategy", "no", "--report_to", "none", "--output_dir", str(out)]) == 0
    return next(out.iterdir())


def nf4_rounded(model, family) -> None:
    """The LLM's linear weights (not lm_head) rounded through bitsandbytes' nf4 with double-quantized scales."""
    import bitsandbytes.functional as bnbf

    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and module_part(name, family) == "llm" and name != "lm_head":
            packed, state = bnbf.quantize_4bit(module.weight.data, quant_type="nf4", compress_statistics=True)
            module.weight.data = bnbf.dequantize_4bit(packed, state).to(module.weight.dtype)


def chat_loss(model, processor) -> float:
    """The mean loss of the answer's tokens (its text, <|im_end|> and the newline) under the HF chat template."""
    full = processor.apply_chat_template(MESSAGES, tokenize=False)
    prompt = processor.apply_chat_template(MESSAGES[:1], tokenize=False, add_generation_prompt=True)
    assert full.startswith(prompt)
    ids = processor.tokenizer(full, return_tensors="pt").input_ids
    labels = ids.clone()
    labels[0, :len(processor.tokenizer(prompt).input_ids)] = IGNORE_INDEX
    with torch.no_grad():
        logits = model(input_ids=ids, use_cache=False).logits[0, :-1]
    return F.cross_entropy(logits.float(), labels[0, 1:], ignore_index=IGNORE_INDEX).item()


@needs_bitsandbytes
def test_sft_trains_on_the_4bit_weights_and_the_loss_falls(qlora_run, tiny_model_dir, processor_of):
    from transformers import AutoModelForImageTextToText

    losses = [json.loads(line)["loss"] for line in open(qlora_run / "logging.jsonl") if '"loss"' in line]
    assert len(losses) == STEPS and losses[-1] < 0.8 * losses[0]
    family, processor = get_family("qwen3_vl"), processor_of("qwen3_vl")
    base = AutoModelForImageTextToText.from_pretrained(tiny_model_dir("qwen3_vl"), dtype=torch.float32).eval()
    unquantized = chat_loss(base, processor)
    nf4_rounded(base, family)
    rounded = chat_loss(base, processor)
    assert abs(rounded - unquantized) > 1e-3  # the 4-bit rounding shows in the loss: the check below can fail
    assert losses[0] == pytest.approx(rounded, abs=2e-4)  # step 1 runs before any update (LoRA B is zero)


@needs_bitsandbytes
def test_the_adapter_answers_in_vlft_infer(qlora_run, tmp_path):
    checkpoint = qlora_run / f"checkpoint-{STEPS}"
    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"messages": MESSAGES}) + "\n")
    result = tmp_path / "answers.jsonl"
    assert main(["infer", "--adapters", str(checkpoint), "--val_dataset", str(questions), "--max_new_tokens", "4",
                 "--result_path", str(result)]) == 0
    assert [isinstance(json.loads(line)["response"], str) for line in open(result)] == [True]


@needs_bitsandbytes
def test_export_merges_onto_the_unquantized_base_and_says_so(qlora_run, tiny_model_dir, tmp_path, capsys):
    from safetensors.torch import load_file

    checkpoint, merged = qlora_run / f"checkpoint-{STEPS}", tmp_path / "merged"
    assert main(["export", "--adapters", str(checkpoint), "--merge_lora", "true", "--output_dir", str(merged)]) == 0
    assert ("trained QLoRA on 4-bit nf4 (bnb) weights: merging it onto the unquantized base model (in float32), not "
            "onto the quantized one") in capsys.readouterr().out
    assert "quantization_config" not in json.loads((merged / "config.json").read_text())
    weights, base = load_file(merged / "model.safetensors"), load_file(tiny_model_dir("qwen3_vl") / "model.safetensors")
    adapter = load_file(checkpoint / "adapter_model.safetensors")
    assert weights.keys() == base.keys() and all(weights[k].dtype == base[k].dtype for k in base)
    changed = 0
    for key in base:
        a = adapter.get(f"base_model.model.{key.removesuffix('.weight')}.lora_A.weight")
        if a is None:
            assert torch.equal(weights[key], base[key]), key  # the vision tower and all else: the base's own
            continue
        b = adapter[f"base_model.model.{key.removesuffix('.weight')}.lora_B.weight"]
        expected = base[key].double() + ALPHA / RANK * b.double() @ a.double()
        assert torch.allclose(weights[key].double(), expected, atol=1e-6), key
        changed += not torch.equal(weights[key], base[key])
    assert changed > 0


@pytest.mark.parametrize("argv, message", [
    (["--quant_method", "bnb", "--quant_bits", "8"], "--quant_bits 8: vlft trains on 4-bit weights only"),
    (["--quant_method", "hqq", "--quant_bits", "4"], "--quant_method hqq: vlft quantizes with bitsandbytes only"),
    (["--quant_bits", "4"], "--quant_bits 4 needs --quant_method bnb"),
    (["--quant_method", "bnb"], "--quant_method bnb needs --quant_bits 4"),
    ([*QLORA, "--train_type", "full"], "--quant_bits with --train_type full: quantized weights do not train"),
    ([*QLORA, "--bnb_4bit_quant_type", "int4"], "--bnb_4bit_quant_type 'int4': choose from nf4, fp4"),
])
def test_unsupported_quantization_arguments(argv, message):
    with pytest.raises(VlftError, match=message.replace("(", r"\(")):
        parse_args(SftArguments, [*SFT, *argv], "vlft sft")


def test_zero3_is_refused_with_the_other_problems_before_anything_loads(tmp_path, capsys):
    args = SftArguments(model="vlft/tiny-qwen3-vl", dataset=["train.jsonl"], quant_method="bnb", quant_bits=4,
                        deepspeed="zero3", output_dir=str(tmp_path), report_to=["nonexistent"])
    with pytest.raises(VlftError) as error:
        check_run_arguments(args, cuda=False)
    assert "--quant_bits 4 does not run under ZeRO-3" in str(error.value)
    assert "--report_to nonexistent: unknown" in str(error.value)
    # the command: exit code 2, no run dir made
    assert main(["sft", *SFT, *QLORA, "--deepspeed", "zero3", "--train_type", "full", "--output_dir",
                 str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "does not run under ZeRO-3" in err and "--train_type full" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_bitsandbytes_missing_or_too_old_is_a_problem_naming_the_install():
    missing = quantization_run_problems(4, 0, None)
    assert len(missing) == 1 and "needs bitsandbytes, which is not installed" in missing[0]
    assert "pip install 'vlft[qlora]'" in missing[0]
    old = quantization_run_problems(4, 0, "0.45.5")
    assert len(old) == 1 and "bitsandbytes 0.45.5 is older than transformers' 4-bit loading needs" in old[0]
    assert quantization_run_problems(None, 3, None) == []  # no quantization asked: nothing to check
    installed = installed_bitsandbytes()
    if installed is not None:
        assert quantization_run_problems(4, 2, installed) == []
        from transformers.utils import is_bitsandbytes_available

        assert is_bitsandbytes_available(BITSANDBYTES_MIN_VERSION)  # transformers agrees it can load 4-bit
