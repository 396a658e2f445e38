"""Loaded by the ms-swift peer's Python when it runs on flash-attn-4 (bench/peers/swift_sft.py puts this dir on
its PYTHONPATH; nothing of vlft uses it). transformers 5.17's flash-attention path passes a packed row's
longest length to `flash_attn_varlen_func` as a 0-d tensor (`cu_seq_lens_q.diff().max()`; an int only while
tracing). flash-attn 2 takes that, but flash-attn-4's CuTe code needs a Python int and fails every step
("Expected IntTuple, whose leaves are integers", measured on an H200). This turns those two arguments into
ints before the call and changes nothing else, so that ms-swift's packing can run in the benchmark."""

import functools

try:
    import torch
    import flash_attn.cute as _cute
except Exception:  # not the flash-attn-4 environment: nothing to do
    _cute = None


def _as_int(value):
    return int(value) if isinstance(value, torch.Tensor) else value


def int_lengths(varlen_func):
    """`varlen_func` with max_seqlen_q / max_seqlen_k given as Python ints."""

    @functools.wraps(varlen_func)
    def call(*args, **kwargs):
        for name in ("max_seqlen_q", "max_seqlen_k"):
            if name in kwargs:
                kwargs[name] = _as_int(kwargs[name])
        return varlen_func(*args, **kwargs)

    return call


if _cute is not None and not getattr(_cute.flash_attn_varlen_func, "_int_lengths", False):
    _cute.flash_attn_varlen_func = int_lengths(_cute.flash_attn_varlen_func)
    _cute.flash_attn_varlen_func._int_lengths = True
