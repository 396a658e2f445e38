"""The longest packed row a `vlft sft` LoRA step fits on this GPU, with and without `--chunked_loss` (and
`--torch_compile`): for each max_length, samples are packed into rows of that length and one training step
(forward, backward, AdamW) runs in-process on the longest row; the table gives peak memory and tokens/s,
or "out of memory". Same model and data as bench/sft_qwen3_vl_4b.py (Qwen3-VL-4B shape, random bf16,
LoRA r8 all-linear, ViT and aligner frozen, gradient checkpointing). GPU machine; one command:

    python bench/longest_row.py --workdir /tmp/vb --lengths 16384,32768,49152,65536,98304,131072
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sft_qwen3_vl_4b import build_model, write_data  # noqa: E402


def one_step(net, optimizer, batch: dict, loss_of, dtype: torch.dtype) -> float:
    """Seconds of one training step on `batch` (synchronised)."""
    device = next(net.parameters()).device
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        loss = loss_of(batch)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/vlft-bench"))
    parser.add_argument("--lengths", default="16384,32768,49152,65536,98304,131072")
    parser.add_argument("--samples", type=int, default=1200, help="enough to fill the longest row")
    parser.add_argument("--losses", default="chunked,plain", help="which loss paths to try, comma-separated")
    parser.add_argument("--torch_compile", action="store_true")
    parser.add_argument("--tiny", action="store_true", help="the built-in tiny Qwen3-VL (CPU check of the script)")
    args = parser.parse_args()

    from vlft.arguments import SftArguments
    from vlft.cli.parsing import parse_args
    from vlft.data.collator import PaddingFreeCollator, VisionTokens
    from vlft.data.dataset import PixelsOnFetch
    from vlft.data.pipeline import build_encoder
    from vlft.train.chunked_loss import ChunkedLoss
    from vlft.train.model import enable_gradient_checkpointing, load_model, resolve_attention, resolve_dtype
    from vlft.train.sft import encoded_samples, pack
    from vlft.train.tuners import prepare_trainable

    cuda = torch.cuda.is_available()
    lengths = [int(n) for n in args.lengths.split(",")]
    args.workdir.mkdir(parents=True, exist_ok=True)
    model = "vlft/tiny-qwen3-vl" if args.tiny else str(args.workdir / "qwen3-vl-4b-random")
    if not args.tiny:
        build_model(Path(model))
    data = write_data(args.workdir / "data", args.samples)
    sft = parse_args(SftArguments, ["--model", model, "--dataset", str(data), "--packing", "true", "--max_length",
                                    str(max(lengths)), "--dataset_num_proc", "8"], "longest_row")
    encoder, model_dir, family = build_encoder(sft)
    samples, _ = encoded_samples(sft, encoder, model_dir, sft.dataset)
    dtype = resolve_dtype(None, cuda)
    net = load_model(model_dir, dtype, resolve_attention(None, True, cuda)[0])
    enable_gradient_checkpointing(net, llm=True, vit=True)
    net = prepare_trainable(net, family, sft)
    if args.torch_compile:
        from vlft.train.compile import compile_decoder_layers

        compile_decoder_layers(net)
    net.to("cuda" if cuda else "cpu").train()
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-4, fused=cuda)
    tokens = VisionTokens(encoder.image_pad_id, encoder.video_pad_id, encoder.tokenizer.pad_token_id)
    collator = PaddingFreeCollator(family, tokens, getattr(net.config.vision_config, "tokens_per_second", None))
    chunked = ChunkedLoss(net)
    loss_paths = {"plain": lambda batch: net(**batch).loss, "chunked": lambda batch: chunked(net, batch)}

    results = []
    for name in args.losses.split(","):
        for length in lengths:
            rows = pack(samples, length, seed=0)
            row = max(rows, key=lambda r: sum(s.length for s in r))
            real = sum(s.length for s in row)
            if real < 0.9 * length:
                sys.exit(f"--samples {args.samples} fill rows of {length} only to {real} tokens: use more")
            batch = {k: v.to(next(net.parameters()).device) if torch.is_tensor(v) else v
                     for k, v in collator(PixelsOnFetch([row], encoder)[0]).items()}
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            try:
                one_step(net, optimizer, batch, loss_paths[name], dtype)  # warm-up (and compilation)
                seconds = one_step(net, optimizer, batch, loss_paths[name], dtype)
                peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
                results.append((name, length, real, f"{peak:.1f}", f"{real / seconds:,.0f}"))
            except torch.OutOfMemoryError:
                optimizer.zero_grad(set_to_none=True)
                results.append((name, length, real, "out of memory", "-"))
            del batch
            print(results[-1], flush=True)
    device = torch.cuda.get_device_name() if cuda else "CPU"
    print(f"\n{device}, torch {torch.__version__}, torch_compile={args.torch_compile}\n")
    print("| loss | max_length | tokens in the row | peak GiB | tokens/s |\n| --- | --- | --- | --- | --- |")
    for row in results:
        print("| " + " | ".join(map(str, row)) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
