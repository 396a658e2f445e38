"""QLoRA (`--quant_method bnb --quant_bits 4`, ms-swift's flags): the LLM's linear layers load as bitsandbytes
4-bit weights (transformers' BitsAndBytesConfig) and LoRA trains on top of them (PEFT's bitsandbytes LoRA layers,
chosen by PEFT for a model loaded in 4-bit). The vision tower, the aligner, the output head and MoE routers stay
in the weights' dtype: the modules the family declares (vlft/families/), as ms-swift keeps its model's vision tower,
aligner, `lm_head` and routers out of bitsandbytes.

Nothing else changes, as in ms-swift and LLaMA-Factory: PEFT freezes the base; no layer is upcast to float32
(peft's prepare_model_for_kbit_training would upcast the bfloat16 ViT too); gradient checkpointing is
non-reentrant, so no input needs requires_grad. An adapter trained so is an ordinary LoRA checkpoint: `vlft infer`
and `vlft export --merge_lora` apply it to the unquantized base (as ms-swift merges, peft#2321)."""

from __future__ import annotations

import importlib.metadata
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vlft.families.base import Family

if TYPE_CHECKING:
    import torch

# transformers 5's minimum for 4-bit loading (transformers.utils.import_utils.BITSANDBYTES_MIN_VERSION); 0.46 also
# brought bitsandbytes' CPU backend for 4-bit weights.
BITSANDBYTES_MIN_VERSION = "0.46.1"


@dataclass(frozen=True)
class Bnb4bit:
    """How the LLM's linears are quantized: bitsandbytes' 4-bit data type, double quantization of the scales, and
    the dtype its matmuls compute in."""

    quant_type: str
    double_quant: bool
    compute_dtype: torch.dtype

    def describe(self) -> str:
        return (f"bitsandbytes 4-bit {self.quant_type}{', double-quantized' if self.double_quant else ''}, "
                f"computing in {str(self.compute_dtype).removeprefix('torch.')}")


def bnb_4bit(args, dtype: torch.dtype) -> Bnb4bit | None:
    """The 4-bit settings of an sft command (None without --quant_method); the compute dtype by default as
    ms-swift's: bfloat16 weights compute in bfloat16, float16 and float32 weights in float32."""
    import torch

    if args.quant_method is None:
        return None
    if args.bnb_4bit_compute_dtype is not None:
        compute = getattr(torch, args.bnb_4bit_compute_dtype)
    else:
        compute = torch.bfloat16 if dtype == torch.bfloat16 else torch.float32
    return Bnb4bit(args.bnb_4bit_quant_type, args.bnb_4bit_use_double_quant, compute)


def qlora_note(settings: Bnb4bit, family: Family) -> str:
    """The log line saying what loads in 4-bit, and what does not."""
    note = (f"QLoRA: the LLM's linear layers load as {settings.describe()}; the vision tower, aligner and output "
            "head stay unquantized")
    if family.moe_layers != "none":  # transformers 5 holds experts as 3-D parameters, which bitsandbytes leaves alone
        note += ("; MoE experts are fused 3-D weights, not linear layers, and stay unquantized too (QLoRA saves "
                 "only the attention's and shared layers' memory)")
    return note


def unquantized_modules(family: Family) -> list[str]:
    """The modules kept out of 4-bit: the vision tower (the aligner is inside it in every family so far, listed
    anyway), the output head and the MoE routers. transformers skips a module whose name begins with one of these
    at a dot, or ends with one (quantizers_utils.should_convert_module)."""
    parts = [family.modules.vision_tower, *(p.rstrip(".") for p in family.aligner_prefixes), family.modules.lm_head]
    return list(dict.fromkeys(parts + list(family.modules.routers)))


def bnb_config(settings: Bnb4bit, family: Family):
    """transformers' BitsAndBytesConfig loading the family's LLM linears in 4-bit."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=settings.quant_type,
                              bnb_4bit_use_double_quant=settings.double_quant,
                              bnb_4bit_compute_dtype=settings.compute_dtype,
                              llm_int8_skip_modules=unquantized_modules(family))


def installed_bitsandbytes() -> str | None:
    """The installed bitsandbytes version, None when it is not installed."""
    try:
        return importlib.metadata.version("bitsandbytes")
    except importlib.metadata.PackageNotFoundError:
        return None


def quantization_run_problems(quant_bits: int | None, zero_stage: int, bitsandbytes_version: str | None) -> list[str]:
    """What stops a QLoRA run on this machine before anything loads: bitsandbytes missing or too old for
    transformers, and DeepSpeed ZeRO-3."""
    if quant_bits is None:
        return []
    from packaging.version import Version

    flag, problems = f"--quant_bits {quant_bits}", []
    install = f"pip install 'vlft[qlora]' (bitsandbytes>={BITSANDBYTES_MIN_VERSION})"
    if bitsandbytes_version is None:
        problems.append(f"{flag} needs bitsandbytes, which is not installed in this Python ({sys.executable}): "
                        f"{install}")
    elif Version(bitsandbytes_version) < Version(BITSANDBYTES_MIN_VERSION):
        problems.append(f"{flag}: bitsandbytes {bitsandbytes_version} is older than transformers' 4-bit loading "
                        f"needs: {install}")
    if zero_stage == 3:
        # ZeRO-3 partitions every parameter; bitsandbytes' packed 4-bit weights and their quantization state would
        # need bnb_4bit_quant_storage in the weights' dtype to be partitioned, which vlft does not set or test.
        problems.append(f"{flag} does not run under ZeRO-3 (its 4-bit weights are not partitioned); the 4-bit LLM "
                        "is a quarter of its bfloat16 size: use --deepspeed zero2, or no --deepspeed")
    return problems


def trained_quantized(checkpoint_args: dict) -> str | None:
    """How the base was quantized while the adapter trained (`--quant_method bnb --quant_bits 4 ...` from the run's
    args.json), None for a run without quantization."""
    if not checkpoint_args.get("quant_bits"):
        return None
    return (f"{checkpoint_args['quant_bits']}-bit {checkpoint_args.get('bnb_4bit_quant_type', 'nf4')} "
            f"({checkpoint_args.get('quant_method')})")
