"""Run under torchrun by test_packed.py: the converted Megatron-Core model of a tiny HF model, on one packed row
of three text samples (PackedSeqParams, thd) and on each sample alone; rank 0 writes the largest logit
differences (packed vs alone, alone vs the HF model) to a JSON file, one entry per case. The cases run one after
the other in the same processes, each in its own process groups; processes beyond a case's model-parallel ranks
are data-parallel replicas of it (as in `vlft megatron sft`).

    python -m torch.distributed.run --standalone --nproc_per_node N tests/megatron/packed_probe.py OUT \\
        MODEL TP EP [MODEL TP EP ...]
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import torch


def probe(model_dir: str, tp: int, ep: int) -> dict | None:
    """One case's differences (on rank 0; None on the other ranks)."""
    import torch.distributed as dist
    from megatron.core.packed_seq_params import PackedSeqParams

    from vlft.megatron.convert import Converter, model_parallel
    from vlft.megatron.cpu import cpu_shims
    from vlft.megatron.parallel import ParallelSizes
    from vlft.megatron.plan import plan_to_mcore
    from vlft.model.loading import load_pretrained

    sizes, cpu = ParallelSizes(tensor=tp, expert=ep), torch.device("cpu")
    replicas = int(os.environ["WORLD_SIZE"]) > sizes.world_size  # torchrun's
    plan = plan_to_mcore(Path(model_dir), Path(tempfile.mkdtemp()) / "unused", sizes, "float32", False)
    with model_parallel(sizes, cpu, data_parallel=replicas), cpu_shims(cpu), torch.no_grad():
        converter = Converter(plan, sizes, torch.float32, cpu)
        converter.fill_from_hf(Path(model_dir), torch.float32)
        language = converter.model.language_model
        generator = torch.Generator().manual_seed(0)
        samples = [torch.randint(0, 5000, (1, n), generator=generator) for n in (11, 17, 6)]

        def positions(lengths):  # mRoPE rows [3, 1, L], restarting at every sample (text only)
            return torch.cat([torch.arange(n) for n in lengths])[None, None].expand(3, 1, -1)

        alone = [language(input_ids=ids, position_ids=positions([ids.shape[1]]), attention_mask=None)
                 for ids in samples]
        lengths = [ids.shape[1] for ids in samples]
        cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
        packed = language(input_ids=torch.cat(samples, 1), position_ids=positions(lengths), attention_mask=None,
                          packed_seq_params=PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu,
                                                            max_seqlen_q=max(lengths), max_seqlen_kv=max(lengths)))
        packed_vs_alone = max((packed[0, a:b] - one[0]).abs().max().item()
                              for a, b, one in zip(cu[:-1].tolist(), cu[1:].tolist(), alone))
        # the same row without its boundaries: later samples attend to earlier ones (what the check must catch)
        unbounded = language(input_ids=torch.cat(samples, 1), position_ids=positions(lengths), attention_mask=None)
        unbounded_vs_alone = max((unbounded[0, a:b] - one[0]).abs().max().item()
                                 for a, b, one in zip(cu[:-1].tolist(), cu[1:].tolist(), alone))
        if dist.get_rank() != 0:
            return None
        hf = load_pretrained(Path(model_dir), torch.float32).eval()
        alone_vs_hf = max((hf(input_ids=ids).logits - one).abs().max().item() for ids, one in zip(samples, alone))
        return {"packed_vs_alone": packed_vs_alone, "alone_vs_hf": alone_vs_hf,
                "unbounded_vs_alone": unbounded_vs_alone,
                "largest_logit": max(one.abs().max().item() for one in alone)}


def groups_under_fresh_keys() -> None:
    """Each process group this process starts keeps its keys under a prefix of its own in torchrun's store, which
    outlives the groups: a second default group under the same keys would read the first one's addresses."""
    import torch.distributed as dist

    start, count = dist.init_process_group, iter(range(1000))

    def init_process_group(backend=None, **kwargs):
        store, rank, world_size = next(dist.rendezvous("env://"))
        start(backend, store=dist.PrefixStore(f"probe-case-{next(count)}", store), rank=rank, world_size=world_size,
              **kwargs)

    dist.init_process_group = init_process_group


def main(out: str, cases: list[str]) -> None:
    groups_under_fresh_keys()
    results = [probe(model_dir, int(tp), int(ep)) for model_dir, tp, ep in zip(*[iter(cases)] * 3)]
    if results and results[0] is not None:
        Path(out).write_text(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
