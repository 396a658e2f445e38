"""`--test_convert_precision true`: the HF model and the converted Megatron-Core model (this rank's shard, with
its tensor- and expert-parallel peers) run one batch of text, an image and a video; rank 0 prints the largest
logit difference. The Megatron-Core side uses only public entry points: the vision tower's embeddings are
scattered into the token embeddings passed as GPTModel's `decoder_input`, and the deepstack features are added
after the first decoder layers by forward hooks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

PROMPT = ("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|><|vision_start|><|video_pad|><|vision_end|>"
          "What moves, and where?<|im_end|>\n<|im_start|>assistant\nA red bar, from left to right.<|im_end|>\n")


def probe_batch(processor) -> dict:
    """A text + image + video batch made here (seeded noise image, 4 frames of a moving bar)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (64, 96, 3), dtype=np.uint8))
    frames = np.full((4, 64, 64, 3), 230, np.uint8)
    for t in range(4):
        frames[t, :, 12 * t:12 * t + 10] = (200, 30, 30)
    metadata = [{"fps": 2.0, "total_num_frames": 4, "frames_indices": [0, 1, 2, 3]}]
    return dict(processor(text=[PROMPT], images=[image], videos=[frames], return_tensors="pt",
                          videos_kwargs={"do_sample_frames": False, "video_metadata": metadata}))


def mcore_logits(converter, batch: dict, position_ids: torch.Tensor, image_token: int, video_token: int):
    """The Megatron-Core model's full-vocabulary logits [B, L, V] for the batch."""
    from vlft.megatron.vision import vision_embedded

    model, ids = converter.model, batch["input_ids"]
    language = model.language_model
    with vision_embedded(model, batch, image_token, video_token) as embeds:
        if not language.mtp_process:
            return language(input_ids=ids, position_ids=position_ids, attention_mask=None, decoder_input=embeds)
        # With a multi-token-prediction block GPTModel computes losses and needs labels (any will do): the main
        # logits are the output layer's last output (the MTP layers' come first); its loss then edits them in
        # place.
        seen = []
        hook = language.output_layer.register_forward_hook(lambda module, args, output: seen.append(
            output[0].clone()))
        try:
            language(input_ids=ids, position_ids=position_ids, attention_mask=None, decoder_input=embeds,
                     labels=torch.zeros_like(ids))
        finally:
            hook.remove()
    return seen[-1].transpose(0, 1)  # [L, B, V] -> [B, L, V]


def _first_tensor(value) -> torch.Tensor:
    return value[0] if isinstance(value, tuple) else value


def hf_logits_and_positions(model_dir: Path, dtype: torch.dtype, batch: dict, device: torch.device,
                            layer_io: dict | None = None):
    """The HF model's logits for the batch and the mRoPE positions it gave its language model ([3, B, L]; each
    family computes them its own way). With `layer_io`, each decoder layer's input and output hidden states
    ([B, L, H]) are kept in it as {index: (input, output)}. The model is freed before returning."""
    from vlft.model.loading import load_pretrained

    hf = load_pretrained(model_dir, dtype).to(device).eval()
    seen = {}

    def keep_positions(module, args, kwargs):
        seen["positions"] = kwargs["position_ids"]

    hooks = [hf.model.language_model.register_forward_pre_hook(keep_positions, with_kwargs=True)]
    if layer_io is not None:
        for i, layer in enumerate(hf.model.language_model.layers):
            hooks.append(layer.register_forward_hook(
                lambda module, args, kwargs, output, i=i: layer_io.__setitem__(
                    i, ((args[0] if args else kwargs["hidden_states"]).detach(), _first_tensor(output).detach())),
                with_kwargs=True))
    try:
        logits = hf(**batch).logits.float()
    finally:
        for hook in hooks:
            hook.remove()
    config = hf.config
    del hf
    return logits, seen["positions"][-3:], config  # Qwen3-VL passes text positions first


def per_layer_difference(converter, layer_io: dict, run) -> tuple[torch.Tensor, float, int]:
    """Each Megatron-Core decoder layer run on its HF twin's input (with the arguments the model gave it in
    `run()`, whose result comes back first), against the HF layer's output: the largest difference and its layer.
    This is the conversion's error without what later layers make of an earlier rounding difference."""
    layers = converter.model.language_model.decoder.layers
    arguments = {}
    hooks = [layer.register_forward_pre_hook(
        lambda module, args, kwargs, i=i: arguments.__setitem__(i, kwargs), with_kwargs=True)
        for i, layer in enumerate(layers)]
    try:
        result = run()
    finally:
        for hook in hooks:
            hook.remove()
    worst, where = -1.0, 0
    for i, layer in enumerate(layers):
        hf_input, hf_output = layer_io[layer.layer_number - 1]
        output = _first_tensor(layer(**{**arguments[i], "hidden_states": hf_input.transpose(0, 1).contiguous()}))
        difference = (output.transpose(0, 1).float() - hf_output.float()).abs().max().item()
        if difference > worst:
            worst, where = difference, layer.layer_number - 1
    return result, worst, where


def report_precision(converter, model_dir: Path, dtype: torch.dtype) -> float:
    """Compare the logits of both models in `dtype`; rank 0 prints the result and returns the largest absolute
    difference. In float32 that difference is the conversion's own error. In a 16-bit dtype the two models round
    differently (fused q/k/v and gate/up matmuls, Megatron-Core's rotary and norm code), so the line also gives
    each one's distance from the HF model in float32: a faithful conversion is about as far from it as HF's own
    16-bit model is."""
    import torch.distributed as dist

    from vlft.model.loading import load_processor

    device = converter.device
    batch = {key: value.to(device) if torch.is_tensor(value) else value
             for key, value in probe_batch(load_processor(model_dir)).items()}
    reference = None
    if dtype != torch.float32:
        reference, _, _ = hf_logits_and_positions(model_dir, torch.float32, batch, device)
    layer_io = {}
    hf_logits, positions, config = hf_logits_and_positions(model_dir, dtype, batch, device, layer_io)
    logits, layer_worst, layer_at = per_layer_difference(converter, layer_io, lambda: mcore_logits(
        converter, batch, positions, config.image_token_id, config.video_token_id))
    logits = logits.float()
    diff = (hf_logits - logits).abs()
    name = str(dtype).removeprefix("torch.")
    if dist.get_rank() == 0:
        print(f"test_convert_precision: {batch['input_ids'].shape[1]} tokens (text, 1 image, 1 video), {name}: "
              f"max |logits HF - Megatron-Core| = {diff.max().item():.3e}, mean {diff.mean().item():.3e} "
              f"(largest |logit| {hf_logits.abs().max().item():.3g})",
              flush=True)
        print(f"test_convert_precision: each decoder layer on its HF twin's input, max |output difference| = "
              f"{layer_worst:.3e} (layer {layer_at})", flush=True)
        if reference is not None:
            print(f"test_convert_precision: against HF in float32, max |difference|: HF {name} "
                  f"{(hf_logits - reference).abs().max().item():.3e}, Megatron-Core {name} "
                  f"{(logits - reference).abs().max().item():.3e}", flush=True)
    return diff.max().item()
