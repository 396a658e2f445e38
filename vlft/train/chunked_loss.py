"""`--chunked_loss true`: the next-token cross-entropy computed from the last hidden states in chunks of
positions, so the logits of a whole row (positions x 151,936 vocabulary, in float32) never exist at once.

transformers' path computes the logits of every position, then a float32 copy of them, then their
gradient: about 10 bytes per position and vocabulary entry. The float32 copy alone is 27.8 GiB at 48k
positions, the allocation that limits the longest packed row on an H100 (BENCHMARKS.md). Here only positions that have a target enter, `CHUNK` of them at a time; each
chunk's logits are made in the dtype the model's lm_head would use (bf16 under autocast), upcast to
float32 like transformers' loss does, and turned into the loss and the gradients of the hidden states
(and of the head's weight when it trains) right away. The model itself runs with `logits_to_keep=1`.
"""

from __future__ import annotations

import torch
from torch import nn

from vlft.data.encode import IGNORE_INDEX
from vlft.errors import VlftError
from vlft.families import family_of, module_at

CHUNK = 2048  # positions per chunk: 2048 x 151,936 float32 logits = 1.2 GiB


class _LinearCrossEntropy(torch.autograd.Function):
    """Sum of cross-entropies of (hidden @ weight.T) against targets, each times its scale where `scales` is given;
    gradients computed in the forward."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, scales, compute_dtype, chunk):
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) \
            if weight.requires_grad else None
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        w = weight.to(compute_dtype)
        for start in range(0, hidden.shape[0], chunk):
            h = hidden[start:start + chunk].to(compute_dtype)
            t = targets[start:start + chunk]
            logits = (h @ w.t()).float()  # as lm_head then transformers' loss compute them
            lse = torch.logsumexp(logits, dim=-1)
            losses = lse - logits.gather(1, t[:, None]).squeeze(1)
            probs = logits.sub_(lse[:, None]).exp_()  # d(sum CE)/d(logits) = softmax - one-hot
            probs[torch.arange(t.shape[0], device=t.device), t] -= 1
            if scales is not None:
                s = scales[start:start + chunk]
                losses = losses * s
                probs.mul_(s[:, None])
            loss += losses.sum()
            g = probs.to(compute_dtype)
            grad_hidden[start:start + chunk] = (g @ w).to(hidden.dtype)
            if grad_weight is not None:
                grad_weight += (g.t() @ h).float()
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.weight_dtype = weight.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grad_hidden, grad_weight = ctx.saved_tensors
        grad_w = None if grad_weight is None else (grad_weight * grad_loss).to(ctx.weight_dtype)
        return grad_hidden * grad_loss.to(grad_hidden.dtype), grad_w, None, None, None, None


def next_token_targets(labels: torch.Tensor) -> torch.Tensor:
    """(B, L) targets of each position: the labels shifted left by one, the last position predicting nothing."""
    return torch.cat([labels[:, 1:], labels.new_full((labels.shape[0], 1), IGNORE_INDEX)], dim=1)


def next_token_scales(loss_scale: torch.Tensor) -> torch.Tensor:
    """(B, L) --loss_scale weights of each position's target: the token weights shifted left by one."""
    return torch.cat([loss_scale[:, 1:], loss_scale.new_zeros((loss_scale.shape[0], 1))], dim=1)


def chunked_cross_entropy_sum(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                              chunk: int = CHUNK, scales: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """(summed loss, count) of the (B, L) `targets` (IGNORE_INDEX where untrained) scored from the final hidden
    states (B, L, H) and the output head's weight (V, H); each target's loss times its (B, L) `scales` where given
    (--loss_scale's weights; the count stays the number of targets)."""
    keep = targets != IGNORE_INDEX
    hidden, targets = hidden[keep], targets[keep]  # one read back to the host: how many positions train
    if targets.numel() == 0:  # a zero tied to the head too: DDP waits for its gradient on every rank
        return (hidden.sum() + (weight.sum() if weight.requires_grad else 0.0)) * 0.0, 0
    scales = None if scales is None else scales.to(hidden.device, torch.float32)[keep]
    device_type = hidden.device.type
    compute_dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) \
        else weight.dtype
    with torch.autocast(device_type, enabled=False):
        return _LinearCrossEntropy.apply(hidden, weight, targets, scales, compute_dtype, chunk), targets.numel()


def chunked_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                          chunk: int = CHUNK, loss_scale: torch.Tensor | None = None) -> torch.Tensor:
    """Mean next-token loss of `labels` (B, L; IGNORE_INDEX where untrained) from the final hidden states
    (B, L, H) and the output head's weight (V, H): what transformers' causal-LM loss gives from the full
    logits (labels shifted left by one, the last position predicting nothing). `loss_scale` (B, L): each token's
    weight (--loss_scale), the sum of weighted losses divided by the number of targets, as ms-swift does."""
    scales = None if loss_scale is None else next_token_scales(loss_scale)
    total, count = chunked_cross_entropy_sum(hidden, weight, next_token_targets(labels), chunk, scales)
    return total / max(count, 1)


class ChunkedLoss:
    """The model's loss through chunked_cross_entropy: the final norm's output is captured by a forward
    hook during the model's own forward (run with `logits_to_keep=1`), then scored against the labels."""

    def __init__(self, model: nn.Module):
        modules = family_of(model).modules
        self.norm, self.head = module_at(model, modules.final_norm), module_at(model, modules.lm_head)
        text_config = getattr(model.config, "text_config", model.config)
        if getattr(text_config, "output_router_logits", False):
            raise VlftError("--chunked_loss does not add the MoE router's aux loss; leave --router_aux_loss_coef "
                            "unset or 0, or --chunked_loss false")

    def __call__(self, model: nn.Module, inputs: dict) -> torch.Tensor:
        inputs = dict(inputs)
        labels, loss_scale = inputs.pop("labels"), inputs.pop("loss_scale", None)
        hidden = self.final_hidden_states(model, inputs)
        return chunked_cross_entropy(hidden, self.head.weight, labels.to(hidden.device), loss_scale=loss_scale)

    def summed(self, model: nn.Module, inputs: dict, targets: torch.Tensor) -> torch.Tensor:
        """The summed loss of targets already shifted (a sequence-parallel shard's: sequence_parallel.py)."""
        hidden = self.final_hidden_states(model, inputs)
        return chunked_cross_entropy_sum(hidden, self.head.weight, targets.to(hidden.device))[0]

    def final_hidden_states(self, model: nn.Module, inputs: dict) -> torch.Tensor:
        """The final norm's output of the model's forward over `inputs` (no labels), run with logits_to_keep=1."""
        captured = []
        handle = self.norm.register_forward_hook(lambda module, args, output: captured.append(output))
        try:
            model(**inputs, logits_to_keep=1)
        finally:
            handle.remove()
        return captured[-1]
