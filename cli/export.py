"""`vlft export --adapters CKPT --merge_lora true [--output_dir D]`: merge a LoRA checkpoint into its base."""

from __future__ import annotations

from pathlib import Path

from vlft.cli.parsing import build_parser, parse_args
from vlft.export.arguments import ExportArguments


def run(argv: list[str]) -> int:
    if "-h" in argv or "--help" in argv:
        build_parser(ExportArguments, "vlft export").print_help()
        return 0
    args = parse_args(ExportArguments, argv, "vlft export")
    import torch

    from vlft.export.checkpoint import base_model_of, require_lora_checkpoint
    from vlft.export.merge import check_output_dir, merge_lora

    checkpoint, output_dir = Path(args.adapters[0]).expanduser(), Path(args.output_dir).expanduser()
    # Cheap checks first: resolving the base model may download it.
    require_lora_checkpoint(checkpoint)
    check_output_dir(output_dir)
    base_dir = base_model_of(checkpoint, args.model, args.cache_dir, use_hf=args.use_hf, hub_token=args.hub_token)
    dtype = getattr(torch, args.torch_dtype) if args.torch_dtype else None
    merge_lora(checkpoint, output_dir, base_dir, dtype)
    print(f"merged {checkpoint} into {base_dir}: wrote {output_dir}")
    return 0
