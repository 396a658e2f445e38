"""PackedGatedDeltaNet (vlft/train/linear_attention.py) against ground truth: transformers' stock Qwen3.5 and
Qwen3.5-MoE layers run on each sample alone, per-segment F.conv1d, a hand-checked convolution and
transformers' own torch delta rule."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
import torch.nn.functional as F
from transformers import Qwen3_5ForCausalLM, Qwen3_5MoeForCausalLM, Qwen3_5MoeTextConfig, Qwen3_5TextConfig

from vlft.train import linear_attention
from vlft.train.linear_attention import (PackedGatedDeltaNet, packed_causal_conv1d, recurrent_gated_delta_rule,
                                         replace_linear_attention, torch_delta_rule)

LENGTHS = (7, 12, 5)
VOCAB = 512


def tiny_model(moe: bool = False) -> torch.nn.Module:
    """A float32 Qwen3.5 (or Qwen3.5-MoE) text model: three Gated DeltaNet layers, then one sdpa attention."""
    settings = dict(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
        layer_types=["linear_attention"] * 3 + ["full_attention"], num_attention_heads=4, num_key_value_heads=2,
        head_dim=16, linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=8,
        linear_value_head_dim=8, use_cache=False, initializer_range=0.05,
        # rotary half of 16 * 0.5 = 4 frequencies, split over (text, height, width)
        rope_parameters={"rope_type": "default", "rope_theta": 1e6, "partial_rotary_factor": 0.5,
                         "mrope_section": [2, 1, 1], "mrope_interleaved": True})
    if moe:
        config = Qwen3_5MoeTextConfig(**settings, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                                      shared_expert_intermediate_size=32)
    else:
        config = Qwen3_5TextConfig(**settings)
    torch.manual_seed(0)
    model_class = Qwen3_5MoeForCausalLM if moe else Qwen3_5ForCausalLM
    return model_class._from_config(config, attn_implementation="sdpa", dtype=torch.float32)


def packed_model(stock: torch.nn.Module) -> torch.nn.Module:
    model = copy.deepcopy(stock)
    assert replace_linear_attention(model.model.layers, "linear_attn", "torch") == 3
    return model


def random_samples(seed: int = 1, lengths=LENGTHS) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (n,), generator=generator) for n in lengths]


def packed_row(samples: list[torch.Tensor], boundaries: bool = True) -> dict:
    """One packed row: text positions restarting per sample and, as forward kwargs, its FlashAttention bounds."""
    row = {"input_ids": torch.cat(samples)[None],
           "position_ids": torch.cat([torch.arange(len(s)) for s in samples])[None]}
    if boundaries:
        cu = torch.tensor([0, *itertools.accumulate(len(s) for s in samples)], dtype=torch.int32)
        longest = max(len(s) for s in samples)
        row |= {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": longest, "max_length_k": longest}
    return row


def split(row_logits: torch.Tensor, samples: list[torch.Tensor]) -> list[torch.Tensor]:
    return list(row_logits[0].split([len(s) for s in samples]))


def assert_close_to_scale(got: torch.Tensor, want: torch.Tensor, rel: float, name: str = "") -> None:
    """Every element within `rel` times the largest magnitude of `want` (float32 sums in another order)."""
    error, scale = (got - want).abs().max().item(), want.abs().max().item()
    assert error <= rel * scale, f"{name}: max error {error:.3g} over scale {scale:.3g}"


def summed_loss(logits: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
    """Next-token cross entropy of one sample, summed over its tokens."""
    return F.cross_entropy(logits[:-1], sample[1:], reduction="sum")


@pytest.mark.parametrize("moe", [False, True], ids=["dense", "moe"])
def test_packed_row_matches_each_sample_alone(moe):
    stock = tiny_model(moe)
    packed = packed_model(stock)
    samples = random_samples()
    expected_logits, expected_losses = [], []
    for sample in samples:  # ground truth: the stock model, one sample per forward, gradients summed
        logits = stock(input_ids=sample[None]).logits[0]
        loss = summed_loss(logits, sample)
        loss.backward()
        expected_logits.append(logits.detach())
        expected_losses.append(loss.detach())

    logits = split(packed(**packed_row(samples)).logits, samples)
    losses = [summed_loss(lg, s) for lg, s in zip(logits, samples)]
    torch.stack(losses).sum().backward()

    for got, want in zip(logits, expected_logits):
        torch.testing.assert_close(got.detach(), want, rtol=0, atol=1e-5)
    torch.testing.assert_close(torch.stack(losses).detach(), torch.stack(expected_losses), rtol=1e-6, atol=1e-5)
    stock_grads = dict(stock.named_parameters())
    linear_grads = 0
    for name, param in packed.named_parameters():
        # 1e-4 held on an Intel Xeon host; an AMD EPYC one sums in another order: dt_bias 1.7e-4 (its gradient a
        # sum over every token, which cancels). A sample seeing another's tokens moves them by 1e-2 and more.
        assert_close_to_scale(param.grad, stock_grads[name].grad, 5e-4, name)
        linear_grads += ".linear_attn." in name and param.grad.abs().sum() > 0
    assert linear_grads == 3 * 9  # in_proj_qkv/z/b/a, conv1d, A_log, dt_bias, norm, out_proj of each layer


def b_logits_and_grads(model, samples, boundaries: bool):
    """Sample B's logits and the gradient of B's loss alone, with B packed between A and C."""
    model.zero_grad()
    logits = split(model(**packed_row(samples, boundaries)).logits, samples)[1]
    summed_loss(logits, samples[1]).backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_changing_sample_a_leaves_sample_b_alone_only_with_the_packed_layer():
    stock = tiny_model()
    packed = packed_model(stock)
    samples = random_samples()
    changed = [random_samples(seed=2)[0], *samples[1:]]

    logits, grads = b_logits_and_grads(packed, samples, boundaries=True)
    logits_changed, grads_changed = b_logits_and_grads(packed, changed, boundaries=True)
    torch.testing.assert_close(logits_changed, logits, rtol=0, atol=1e-6)
    for name, grad in grads.items():
        torch.testing.assert_close(grads_changed[name], grad, rtol=1e-5, atol=1e-7, msg=name)

    # The bug being fixed: the stock layers let A's tokens reach B (the sdpa layer alone keeps them apart).
    stock_logits, _ = b_logits_and_grads(stock, samples, boundaries=False)
    stock_changed, _ = b_logits_and_grads(stock, changed, boundaries=False)
    assert (stock_changed - stock_logits).abs().max() > 1e-3


def test_conv_taps_stop_at_sample_starts_hand_checked():
    # one channel, taps (oldest first) 1000, 100, 10, 1; samples [1, 2] and [3, 4, 5, 6]
    x = torch.tensor([1.0, 2, 3, 4, 5, 6]).reshape(1, 6, 1)
    weight = torch.tensor([[1000.0, 100, 10, 1]])
    out = packed_causal_conv1d(x, weight, None, torch.tensor([0, 2, 6], dtype=torch.int32), activation=None)
    assert out.reshape(-1).tolist() == [1, 12, 3, 34, 345, 3456]


def test_conv_equals_per_sample_conv1d_forward_and_backward():
    generator = torch.Generator().manual_seed(0)
    lengths, channels = [2, 5, 1, 9], 6
    x = torch.randn(1, sum(lengths), channels, generator=generator, requires_grad=True)
    weight = torch.randn(channels, 4, generator=generator, requires_grad=True)
    bias = torch.randn(channels, generator=generator, requires_grad=True)
    cu = torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32)
    out = packed_causal_conv1d(x, weight, bias, cu, "silu")
    expected = torch.cat([F.silu(F.conv1d(part.transpose(1, 2), weight[:, None], bias, padding=3,
                                          groups=channels)[..., :n]).transpose(1, 2)
                          for part, n in zip(x.split(lengths, dim=1), lengths)], dim=1)
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
    upstream = torch.randn(out.shape, generator=generator)
    got = torch.autograd.grad(out, (x, weight, bias), upstream)
    want = torch.autograd.grad(expected, (x, weight, bias), upstream)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)


def test_padded_batch_with_attention_mask_matches_the_stock_layer():
    stock = tiny_model().model.layers[1].linear_attn
    packed = PackedGatedDeltaNet(stock, "torch")  # the same parameters, adopted
    hidden = torch.randn(2, 10, 64, generator=torch.Generator().manual_seed(3), requires_grad=True)
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, :3] = 0  # left padding in the second row
    results = []
    for layer in (stock, packed):
        out = layer(hidden, attention_mask=mask)
        grads = torch.autograd.grad(out.square().sum(), [hidden, *stock.parameters()])
        results.append((out.detach(), grads))
    (want, want_grads), (got, got_grads) = results
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    for g, w in zip(got_grads, want_grads):
        assert_close_to_scale(g, w, 1e-5)


def test_state_dict_unchanged_and_cache_refused():
    stock = tiny_model()
    before = stock.state_dict()
    packed = packed_model(stock)
    after = packed.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], before[k]) for k in before)
    layer = packed.model.layers[0].linear_attn
    assert isinstance(layer, PackedGatedDeltaNet) and layer.layer_idx == 0
    assert replace_linear_attention(packed.model.layers, "linear_attn", "torch") == 0  # already replaced
    hidden = torch.randn(1, 4, 64)
    with pytest.raises(ValueError, match="takes no cache"):
        layer(hidden, cache_params=object())
    with pytest.raises(ValueError, match="one packed row"):
        layer(hidden.expand(2, -1, -1), cu_seq_lens_q=torch.tensor([0, 4], dtype=torch.int32))
    with pytest.raises(ValueError, match="do not cover"):
        layer(hidden, cu_seq_lens_q=torch.tensor([0, 3], dtype=torch.int32))
    with pytest.raises(ValueError, match="kernels must be one of"):
        PackedGatedDeltaNet(stock.model.layers[1].linear_attn, "cuda")


def test_recurrent_fallback_equals_transformers_chunked_reference():
    reference = torch_delta_rule()
    assert reference is not recurrent_gated_delta_rule  # transformers 5.23 exposes its torch function
    generator = torch.Generator().manual_seed(0)
    # 70 tokens: two chunks of 64; two q/k heads, four value heads (grouped)
    query, key = (torch.randn(1, 70, 2, 8, generator=generator) for _ in range(2))
    value = torch.randn(1, 70, 4, 8, generator=generator)
    g = -torch.rand(1, 70, 4, generator=generator)
    beta = torch.rand(1, 70, 4, generator=generator)
    want, _ = reference(query, key, value, g=g, beta=beta, use_qk_l2norm_in_kernel=True)
    got, _ = recurrent_gated_delta_rule(query, key, value, g=g, beta=beta, use_qk_l2norm_in_kernel=True)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_lora_on_the_projections_runs_in_the_packed_forward():
    from peft import LoraConfig, get_peft_model

    model = packed_model(tiny_model())
    lora = get_peft_model(model, LoraConfig(r=2, target_modules=["in_proj_qkv", "out_proj"]))
    layer = lora.base_model.model.model.layers[0].linear_attn
    assert all(type(getattr(layer, name)).__module__.startswith("peft") for name in ("in_proj_qkv", "out_proj"))
    for name, param in lora.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.5)
    row = packed_row(random_samples())
    with lora.disable_adapter():
        base = lora(**row).logits
    assert (lora(**row).logits - base).abs().max() > 1e-3


def test_a_packed_run_on_cuda_stops_before_loading_when_fla_cannot_train(monkeypatch):
    """fla missing, or refusing the GPU (fla 0.6.0 on Hopper with Triton < 3.7.1: fla#640): a clear error naming
    the reason and the unpacked alternative; unpacked runs, CPU runs and non-hybrid families go on."""
    from vlft.errors import VlftError
    from vlft.families import get_family
    from vlft.train import model as model_module

    assert linear_attention.fla_refusal() == "no CUDA device" and not linear_attention.fla_available()
    reason = "fla 0.6.0 does not train on this GPU: RuntimeError: Triton >= 3.4.0 and < 3.7.1 on Hopper GPUs ..."
    monkeypatch.setattr(model_module, "fla_refusal", lambda: reason)
    with pytest.raises(VlftError, match="--packing false --padding_free false") as e:
        model_module.check_linear_attention_kernels(get_family("qwen3_5_moe"), padding_free=True, cuda=True)
    assert reason in str(e.value)
    model_module.check_linear_attention_kernels(get_family("qwen3_5"), padding_free=False, cuda=True)
    model_module.check_linear_attention_kernels(get_family("qwen3_5"), padding_free=True, cuda=False)
    model_module.check_linear_attention_kernels(get_family("qwen3_vl"), padding_free=True, cuda=True)
    # fla trains, but not in this dtype here (float32 on Hopper): a packed run stops naming bfloat16
    monkeypatch.setattr(model_module, "fla_refusal", lambda: None)
    dtype_reason = "fla 0.6.0's float32 gated delta rule gives wrong gate gradients on Hopper GPUs"
    monkeypatch.setattr(model_module, "fla_dtype_refusal",
                        lambda dtype: dtype_reason if dtype == torch.float32 else None)
    with pytest.raises(VlftError, match=dtype_reason):
        model_module.check_linear_attention_kernels(get_family("qwen3_5"), True, True, torch.float32)
    model_module.check_linear_attention_kernels(get_family("qwen3_5"), True, True, torch.bfloat16)
    assert linear_attention.fla_dtype_refusal(torch.float32) is None  # no CUDA here
