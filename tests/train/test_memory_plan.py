"""`--gradient_checkpointing auto`'s memory plan (vlft/train/memory_plan.py): the probe (which keeps nothing and
counts per layer) counts what a real forward keeps for its backward (every saved tensor kept alive, each storage
counted once),
the plan picks the fewest recomputed layers that fit, and recomputing only the planned layers trains exactly as
recomputing all of them. The estimate against a GPU's measured peak: tests/gpu/test_memory_plan_gpu.py."""

from __future__ import annotations

import contextlib
import dataclasses

import torch

from tests.train.test_packing_parity import encoded_batch, lora_args
from vlft.data.collator import PaddingFreeCollator, VisionTokens
from vlft.train.compile import decoder_layers
from vlft.train.memory_plan import (BUDGET_SHARE, ActivationProbe, apply_plan, estimate_peak, layer_inputs,
                                    plan_checkpointing, probe_activations, static_bytes)
from vlft.train.model import enable_gradient_checkpointing, load_model
from vlft.train.summary import loss_transient_bytes
from vlft.train.tuners import prepare_trainable


def lora_model_and_row(tiny_model_dir, processor_of, media_dir):
    encoder, family, samples = encoded_batch("qwen3_vl", tiny_model_dir, processor_of, media_dir)
    tokens = VisionTokens(encoder.image_pad_id, encoder.video_pad_id, encoder.tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = load_model(tiny_model_dir("qwen3_vl"), torch.float32, "sdpa")
    enable_gradient_checkpointing(model, llm=True, vit=False)
    model = prepare_trainable(model, family, lora_args()).train()
    return model, PaddingFreeCollator(family, tokens, None)(samples)


def kept_storages(model, inputs: dict) -> dict[int, int]:
    """{storage pointer: bytes} of every tensor a plain forward keeps for its backward (saved-tensor hooks that keep
    each tensor, so that every storage stays alive and is counted once), the weights left out."""
    found, kept = {}, []

    def pack(tensor):
        kept.append(tensor)
        found[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(**inputs, logits_to_keep=1)
    weights = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    return {ptr: size for ptr, size in found.items() if ptr not in weights}


def test_the_probe_counts_what_a_forward_keeps(tiny_model_dir, processor_of, media_dir):
    model, batch = lora_model_and_row(tiny_model_dir, processor_of, media_dir)
    layers = decoder_layers(model)
    hidden = model.config.get_text_config().hidden_size
    probe = probe_activations(model, layers, batch, hidden)
    assert all(layer.gradient_checkpointing for layer in layers)  # restored after the probe
    assert probe.tokens == batch["input_ids"].numel()
    assert min(probe.per_layer) > 0 and probe.layer_input == probe.tokens * hidden * 4

    for layer in layers:  # the reference: a plain forward keeping every layer's activations
        layer.gradient_checkpointing = False
    reference = sum(kept_storages(model, {k: v for k, v in batch.items() if k != "labels"}).values())
    counted = probe.outside + sum(probe.per_layer)
    # The probe counts a storage that several layers save (the rotary tables, the row boundaries) once per layer,
    # the reference once: those are a few per cent of a layer's activations.
    assert reference <= counted <= 1.05 * reference, (counted, reference)


def test_the_plan_recomputes_the_fewest_layers_that_fit():
    probe = ActivationProbe(tokens=1000, per_layer=[100_000, 300_000, 200_000, 300_000], outside=10_000,
                            layer_input=8_000)
    tokens, static, loss = 4000, 5_000_000, 1_000_000

    def usable_for(recomputed):  # the memory in which exactly this estimate fits
        return estimate_peak(probe, frozenset(recomputed), tokens, static, loss).total / BUDGET_SHARE + 1

    none = plan_checkpointing(probe, tokens, static, loss, usable_for([]))
    assert none.recomputed == frozenset() and none.fits and "no gradient checkpointing" in none.line()
    two = plan_checkpointing(probe, tokens, static, loss, usable_for([1, 3]))
    assert two.recomputed == {1, 3}  # the two layers keeping the most, not the first two
    assert "2 of 4 decoder layers" in two.line()
    every = plan_checkpointing(probe, tokens, static, loss, usable_for([0, 1, 2, 3]))
    assert every.recomputed == {0, 1, 2, 3} and every.fits
    short = plan_checkpointing(probe, tokens, static, loss, static)
    assert short.recomputed == {0, 1, 2, 3} and not short.fits and "may not fit" in short.line()
    # each recomputed layer trades its activations for its input and one layer is recomputed at a time
    estimate = estimate_peak(probe, frozenset({1}), tokens, static, loss)
    assert estimate.kept == 4 * (10_000 + 100_000 + 200_000 + 300_000 + 8_000)
    assert estimate.transient == max(loss, 4 * (300_000 + 300_000))
    # a measured backward's working memory (working_memory.py) takes the place of the largest layer's activations
    measured = dataclasses.replace(probe, layer_backward=50_000)
    assert estimate_peak(measured, frozenset({1}), tokens, 0, 0).transient == 4 * (300_000 + 50_000)


def test_loss_working_memory_with_and_without_chunks():
    whole = loss_transient_bytes(8192, 151_936, 2560, chunked_loss=False, chunk=2048, dtype_bytes=2)
    chunked = loss_transient_bytes(8192, 151_936, 2560, chunked_loss=True, chunk=2048, dtype_bytes=2)
    assert whole == 8192 * 151_936 * 10
    assert chunked == 2048 * 151_936 * 6 + 8192 * 2560 * 2 and chunked < whole / 3


def test_recomputing_only_planned_layers_gives_the_same_gradients(tiny_model_dir, processor_of, media_dir):
    model, batch = lora_model_and_row(tiny_model_dir, processor_of, media_dir)
    layers = decoder_layers(model)

    def gradients(recomputed) -> dict[str, torch.Tensor]:
        apply_plan(layers, frozenset(recomputed))
        assert [layer.gradient_checkpointing for layer in layers] == [i in recomputed for i in range(len(layers))]
        model.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    every, some = gradients({0, 1}), gradients({1})
    assert every.keys() == some.keys()
    for name in every:
        torch.testing.assert_close(some[name], every[name], rtol=1e-5, atol=1e-7, msg=name)


def test_static_bytes_count_the_gradient_copy_of_accumulation_under_cuda_graphs():
    """Gradients, AdamW's two moments and (under CUDA graphs with accumulation) a second copy of the gradients of
    the layers replayed as graphs."""
    model = torch.nn.Sequential(torch.nn.Linear(10, 10), torch.nn.Linear(10, 10, bias=False), torch.nn.Linear(2, 2))
    model[1].requires_grad_(False)  # 116 trained float32 values: 464 bytes of gradients, 928 of moments
    assert static_bytes(model, 1000) == 1000 + 464 + 928
    assert static_bytes(model, 1000, copied=model[:2]) == 1000 + 464 + 440 + 928


def test_the_compiled_probe_counts_what_inductors_graphs_keep(tiny_model_dir, processor_of, media_dir):
    """With the layers to be compiled (vlft sft's default on CUDA), the probe goes through graphs partitioned as
    inductor partitions them: it counts what the real inductor-compiled layers keep (the reference, compiled on
    this CPU), which is less than what eager layers keep; afterwards the layers run eagerly again."""
    import torch._dynamo

    from vlft.train.compile import compile_decoder_layers, layers_compiled_for_probing

    # LoRA dropout 0 keeps the CPU compile short; with vlft's default 0.05 (CounterDropout, as vlft sft swaps it
    # in before compiling) the probe was 0.84x eager's on this model, within 5% of inductor's too.
    model, batch = lora_model_and_row(tiny_model_dir, processor_of, media_dir)
    layers = decoder_layers(model)
    hidden = model.config.get_text_config().hidden_size
    eager = probe_activations(model, layers, batch, hidden)
    with layers_compiled_for_probing(model):
        partitioned = probe_activations(model, layers, batch, hidden)
    assert all(module._compiled_call_impl is None for layer in layers for module in (layer, *layer.children()))
    assert partitioned.outside == eager.outside  # only the decoder layers differ

    torch._dynamo.reset()
    compile_decoder_layers(model)  # the reference: inductor's own graphs
    try:
        compiled = probe_activations(model, layers, batch, hidden)
    finally:
        torch._dynamo.reset()
    for probed, real, plain in zip(partitioned.per_layer, compiled.per_layer, eager.per_layer):
        assert abs(probed - real) <= 0.05 * real, (probed, real)
        assert probed < 0.97 * plain, (probed, plain)  # e.g. the norms' outputs recomputed, not kept


def test_a_layer_runs_again_on_the_arguments_recorded_for_it(tiny_model_dir, processor_of, media_dir):
    """The layer whose backward the plan measures (working_memory.layer_backward_bytes) runs on the first layer's
    recorded input and its own recorded arguments (rotary tables, row boundaries): given its own input instead, it
    gives what it gave inside the model's forward, so no argument was lost."""
    model, batch = lora_model_and_row(tiny_model_dir, processor_of, media_dir)
    layers = decoder_layers(model)
    inputs, outputs = {}, {}
    last = len(layers) - 1
    hooks = [layers[last].register_forward_pre_hook(lambda m, args, kwargs: inputs.update(x=args[0] if args else
                                                                                          kwargs["hidden_states"]),
                                                    with_kwargs=True),
             layers[last].register_forward_hook(lambda m, args, out: outputs.update(y=out))]
    seen = layer_inputs(model, layers, batch, contextlib.nullcontext)
    for hook in hooks:
        hook.remove()
    assert all(layer.gradient_checkpointing for layer in layers)  # restored
    assert seen["hidden"].shape == inputs["x"].shape and set(seen["calls"]) == set(range(len(layers)))
    hidden_as_arg, args, kwargs = seen["calls"][last]
    with torch.no_grad():
        x = inputs["x"]
        again = layers[last](x, *args, **kwargs) if hidden_as_arg else layers[last](*args, hidden_states=x, **kwargs)
    again = again[0] if isinstance(again, tuple) else again
    expected = outputs["y"][0] if isinstance(outputs["y"], tuple) else outputs["y"]
    torch.testing.assert_close(again, expected)
