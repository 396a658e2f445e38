"""The fast path on by default (vlft/train/fast_path.py): which parts a run gets from its arguments and machine,
the one line saying what is off and why, and that a flag the user gives always wins."""

from __future__ import annotations

import pytest
import torch

from vlft.arguments import SftArguments
from vlft.train.fast_path import choose_fast_path, layers_not_whole


def args(**overrides) -> SftArguments:
    values = dict(model="m", dataset=["d.jsonl"], packing=True, max_length=4096)
    return SftArguments(**{**values, **overrides})


def test_one_cuda_process_packed_gets_compiled_layers_cuda_graphs_and_the_chunked_loss():
    fast = choose_fast_path(args(), cuda=True, zero_stage=None, varlen_attention=True)
    assert (fast.torch_compile, fast.compile_mode, fast.cuda_graphs, fast.chunked_loss) == (
        True, "reduce-overhead", True, True)
    assert fast.off == {}
    assert fast.line().startswith("fast path: torch.compile, CUDA graphs, chunked loss on")


def test_gradient_accumulation_keeps_cuda_graphs():
    """The seed command's --gradient_accumulation_steps 2: its gradients are copied out of graph memory
    (graph_gradients.py), so the layers still replay as CUDA graphs."""
    fast = choose_fast_path(args(gradient_accumulation_steps=2), cuda=True, zero_stage=None, varlen_attention=True)
    assert fast.cuda_graphs and fast.off == {}


def test_on_cpu_nothing_is_on_and_the_line_says_why():
    fast = choose_fast_path(args(), cuda=False, zero_stage=None, varlen_attention=False)
    assert not (fast.torch_compile or fast.cuda_graphs or fast.chunked_loss)
    assert fast.off == {"torch.compile": "CPU", "chunked loss": "CPU"}
    assert "off: torch.compile (CPU); chunked loss (CPU)" in fast.line()


@pytest.mark.parametrize("overrides, zero_stage, varlen, reason", [
    ({"packing": False, "padding_free": True}, None, True, "--packing false"),
    ({}, 2, True, "--deepspeed"),
    ({"attn_impl": "flash_attn"}, None, False, "--attn_impl flash_attn"),
    ({"per_device_eval_batch_size": 2}, None, True, "--per_device_eval_batch_size"),
    ({"sequence_parallel_size": 2}, None, True, "--sequence_parallel_size 2: the all-to-alls"),
])
def test_what_keeps_cuda_graphs_off_leaves_the_layers_compiled(overrides, zero_stage, varlen, reason):
    fast = choose_fast_path(args(**overrides), cuda=True, zero_stage=zero_stage, varlen_attention=varlen)
    assert fast.torch_compile and fast.compile_mode is None and not fast.cuda_graphs
    assert fast.off["CUDA graphs"].startswith(reason)
    assert fast.chunked_loss


def test_zero3_fsdp_and_an_aux_loss_keep_their_parts_off():
    zero3 = choose_fast_path(args(), cuda=True, zero_stage=3, varlen_attention=True)
    assert not zero3.torch_compile and not zero3.chunked_loss
    assert "ZeRO-3" in zero3.off["torch.compile"] and "ZeRO-3" in zero3.off["chunked loss"]
    fsdp = choose_fast_path(args(), cuda=True, zero_stage=None, varlen_attention=True, sharded=True)
    assert not fsdp.torch_compile and not fsdp.chunked_loss
    aux = choose_fast_path(args(router_aux_loss_coef=1e-3), cuda=True, zero_stage=None, varlen_attention=True)
    assert aux.torch_compile and not aux.chunked_loss and "aux loss" in aux.off["chunked loss"]


def test_flags_the_user_gives_win():
    fast = choose_fast_path(args(torch_compile=False, chunked_loss=False), cuda=True, zero_stage=None,
                            varlen_attention=True)
    assert not fast.torch_compile and not fast.chunked_loss and fast.line() is None
    plain = choose_fast_path(args(torch_compile=True, chunked_loss=True), cuda=False, zero_stage=None,
                             varlen_attention=False)
    assert plain.torch_compile and plain.compile_mode is None and plain.chunked_loss  # as asked, even on CPU
    mode = choose_fast_path(args(torch_compile_mode="default"), cuda=True, zero_stage=None, varlen_attention=True)
    assert mode.torch_compile and mode.compile_mode == "default"  # not replaced by reduce-overhead


def test_the_defaults_are_auto_and_parse_from_the_command_line():
    from cli.parsing import parse_args

    default = args()
    assert (default.torch_compile, default.chunked_loss, default.gradient_checkpointing) == (None, None, "auto")
    assert default.vit_gradient_checkpointing is True
    for word, value in (("auto", "auto"), ("true", True), ("false", False)):
        parsed = parse_args(SftArguments, ["--model", "m", "--dataset", "d", "--gradient_checkpointing", word],
                            "vlft sft")
        assert parsed.gradient_checkpointing == value
    with pytest.raises(Exception, match="--gradient_checkpointing 'sometimes'"):
        parse_args(SftArguments, ["--model", "m", "--dataset", "d", "--gradient_checkpointing", "sometimes"],
                   "vlft sft")


@pytest.mark.parametrize("family, dropout, reason", [
    ("qwen3_vl", 0.0, None), ("qwen3_vl", 0.05, "LoRA dropout"), ("qwen3_vl_moe", 0.0, None),
])
def test_layers_that_do_not_compile_whole_turn_the_default_compile_off(tiny_model_dir, family, dropout, reason):
    from vlft.families import family_of
    from vlft.train.compile import decoder_layers
    from vlft.train.model import load_model
    from vlft.train.tuners import prepare_trainable

    model = load_model(tiny_model_dir(family), torch.float32, "sdpa")
    model = prepare_trainable(model, family_of(model), args(model=str(tiny_model_dir(family)), lora_dropout=dropout))
    layers = decoder_layers(model)
    whole, why = layers_not_whole(layers, family_of(model).decoder_kinds(model.config.get_text_config()))
    fast = choose_fast_path(args(), cuda=True, zero_stage=None, varlen_attention=True).for_model(whole, len(layers),
                                                                                                   why)
    if reason is None:
        assert whole == len(layers) and fast.cuda_graphs
    else:
        assert not fast.torch_compile and "CUDA graphs" not in fast.off
        assert reason in fast.off["torch.compile"] and reason in fast.line()
    explicit = choose_fast_path(args(torch_compile=True), cuda=True, zero_stage=None, varlen_attention=True)
    assert explicit.for_model(whole, len(layers), why).torch_compile  # asked for: compiled part by part


def test_swapped_lora_dropout_keeps_the_default_compile_and_cuda_graphs(tiny_model_dir):
    """`vlft sft` swaps LoRA's dropout for counter_dropout.py's before the check: layers with dropout compile whole."""
    from vlft.families import family_of
    from vlft.train.compile import decoder_layers
    from vlft.train.counter_dropout import replace_lora_dropouts
    from vlft.train.model import load_model
    from vlft.train.tuners import prepare_trainable

    model = load_model(tiny_model_dir("qwen3_vl"), torch.float32, "sdpa")
    model = prepare_trainable(model, family_of(model), args(model=str(tiny_model_dir("qwen3_vl")), lora_dropout=0.05))
    assert replace_lora_dropouts(model) is not None
    layers = decoder_layers(model)
    whole, why = layers_not_whole(layers, family_of(model).decoder_kinds(model.config.get_text_config()))
    fast = choose_fast_path(args(), cuda=True, zero_stage=None, varlen_attention=True).for_model(whole, len(layers),
                                                                                                   why)
    assert whole == len(layers) and fast.torch_compile and fast.cuda_graphs


def test_moe_layers_without_cuda_graphs_keep_the_default_compile_off():
    """Compiled without CUDA graphs, the MoE measured slower than eager (BENCHMARKS.md): by default MoE layers
    compile only as CUDA graphs; asked for, they compile anyway."""
    unpacked = choose_fast_path(args(packing=False, padding_free=True), cuda=True, zero_stage=None,
                                varlen_attention=True)
    fast = unpacked.for_model(4, 4, None, moe=True)
    assert not fast.torch_compile and "MoE layers compiled without CUDA graphs" in fast.off["torch.compile"]
    assert "--packing false" in fast.line()
    assert unpacked.for_model(4, 4, None, moe=False).torch_compile  # dense layers: compiled without graphs
    graphed = choose_fast_path(args(), cuda=True, zero_stage=None, varlen_attention=True)
    assert graphed.for_model(4, 4, None, moe=True).cuda_graphs
    asked = choose_fast_path(args(torch_compile=True, packing=False, padding_free=True), cuda=True, zero_stage=None,
                             varlen_attention=True)
    assert asked.for_model(4, 4, None, moe=True).torch_compile


def test_qlora_keeps_the_default_compile_off():
    fast = choose_fast_path(args(quant_method="bnb", quant_bits=4), cuda=True, zero_stage=None, varlen_attention=True)
    assert not fast.torch_compile and "--quant_bits 4" in fast.off["torch.compile"] and fast.chunked_loss


def test_a_config_that_turns_the_aux_loss_on_keeps_the_default_chunked_loss_off():
    fast = choose_fast_path(args(), cuda=True, zero_stage=None, varlen_attention=True).for_model(4, 4, None, True)
    assert not fast.chunked_loss and "output_router_logits" in fast.off["chunked loss"] and fast.cuda_graphs
    asked = choose_fast_path(args(chunked_loss=True), cuda=True, zero_stage=None, varlen_attention=True)
    assert asked.for_model(4, 4, None, True).chunked_loss  # asked for: ChunkedLoss then says why it cannot
