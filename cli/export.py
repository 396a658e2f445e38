"""`vlft export`: merge a LoRA checkpoint into its base (`--adapters CKPT --merge_lora true [--output_dir D]`)
and/or push to ModelScope or the HF Hub (`--push_to_hub true --hub_model_id ID [--hub_token T]`): the merged
dir, the adapter checkpoint as is, or a `--model DIR`."""

from __future__ import annotations

from pathlib import Path

from vlft.cli.parsing import build_parser, parse_args
from vlft.export.arguments import ExportArguments


def merge(args: ExportArguments) -> Path:
    """Merge --adapters into its base model; returns the merged model dir."""
    import torch

    from vlft.export.checkpoint import base_model_of, require_lora_checkpoint
    from vlft.export.merge import check_output_dir, merge_lora

    checkpoint, output_dir = Path(args.adapters[0]).expanduser(), Path(args.output_dir).expanduser()
    # Cheap checks first: resolving the base model may download it.
    require_lora_checkpoint(checkpoint)
    check_output_dir(output_dir)
    base_dir = base_model_of(checkpoint, args.model, args.cache_dir, use_hf=args.use_hf, hub_token=args.hub_token)
    dtype = getattr(torch, args.torch_dtype) if args.torch_dtype else None
    merge_lora(checkpoint, output_dir, base_dir, dtype, max_shard_size=args.max_shard_size)
    print(f"merged {checkpoint} into {base_dir}: wrote {output_dir}")
    return output_dir


def push(args: ExportArguments, folder: Path, base_override: str | None) -> None:
    """Push `folder` to the hub the arguments name."""
    from vlft.export.push import PushTarget, push_dir

    target = PushTarget(repo_id=args.hub_model_id, private=args.hub_private_repo, use_hf=args.use_hf,
                        token=args.hub_token)
    url = push_dir(folder, target, base_override)
    print(f"pushed {folder} to {target.hub}: {url}")


def run(argv: list[str]) -> int:
    if "-h" in argv or "--help" in argv:
        build_parser(ExportArguments, "vlft export").print_help()
        return 0
    args = parse_args(ExportArguments, argv, "vlft export")
    if args.push_to_hub and not args.merge_lora:
        # An adapter checkpoint (--adapters, or --model as in ms-swift's `swift export --model CKPT`) goes as
        # is; with --adapters, --model names its base for the model card.
        folder = Path(args.adapters[0] if args.adapters else args.model).expanduser()
        push(args, folder, args.model if args.adapters else None)
        return 0
    if args.push_to_hub:
        from vlft.export.push import check_hub_client

        check_hub_client(args.use_hf)  # before the merge, which may take minutes
    merged = merge(args)
    if args.push_to_hub:
        push(args, merged, args.model)
    return 0
