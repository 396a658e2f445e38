"""`vlft export`: merge a LoRA checkpoint into its base (`--adapters CKPT --merge_lora true [--output_dir D]`)
and/or push to ModelScope or the HF Hub (`--push_to_hub true --hub_model_id ID [--hub_token T]`): the merged
dir, the adapter checkpoint as is, or a `--model DIR`. `--to_mcore true` / `--to_hf true` convert to and from a
Megatron-Core checkpoint (docs/megatron.md)."""

from __future__ import annotations

from pathlib import Path

from vlft.cli.parsing import build_parser, parse_args
from vlft.export.arguments import ExportArguments


def merge(args: ExportArguments) -> Path:
    """Merge --adapters into its base model; returns the merged model dir."""
    import torch

    from vlft.export.checkpoint import (args_json_path, base_model_of, check_output_dir, read_checkpoint_args,
                                        require_lora_checkpoint)
    from vlft.export.merge import merge_lora
    from vlft.train.quantization import trained_quantized

    checkpoint, output_dir = Path(args.adapters[0]).expanduser(), Path(args.output_dir).expanduser()
    # Cheap checks first: resolving the base model may download it.
    require_lora_checkpoint(checkpoint)
    check_output_dir(output_dir)
    base_dir = base_model_of(checkpoint, args.model, args.cache_dir, use_hf=args.use_hf, hub_token=args.hub_token,
                             revision=args.model_revision)
    dtype = getattr(torch, args.torch_dtype) if args.torch_dtype else None
    quantized = trained_quantized(read_checkpoint_args(checkpoint)) if args_json_path(checkpoint) else None
    if quantized:  # QLoRA: merged as ms-swift merges it (peft#2321), never into rounded 4-bit weights
        print(f"{checkpoint} trained QLoRA on {quantized} weights: merging it onto the unquantized base model "
              f"(in {args.torch_dtype or _stored_dtype(base_dir)}), not onto the quantized one")
    merge_lora(checkpoint, output_dir, base_dir, dtype, max_shard_size=args.max_shard_size)
    print(f"merged {checkpoint} into {base_dir}: wrote {output_dir}")
    return output_dir


def _stored_dtype(model_dir: Path) -> str:
    """The dtype a model dir's config.json says its weights are stored in (transformers 5's `dtype`)."""
    import json

    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    return config.get("dtype") or config.get("torch_dtype") or "its stored dtype"


def push(args: ExportArguments, folder: Path, base_override: str | None) -> None:
    """Push `folder` to the hub the arguments name."""
    from vlft.export.push import PushTarget, push_dir

    target = PushTarget(repo_id=args.hub_model_id, private=args.hub_private_repo, use_hf=args.use_hf,
                        token=args.hub_token)
    url = push_dir(folder, target, base_override)
    print(f"pushed {folder} to {target.hub}: {url}")


def to_mcore(args: ExportArguments) -> Path:
    """Convert --model (or --adapters merged into its base, in a scratch dir) to a Megatron-Core checkpoint in
    --output_dir."""
    import tempfile

    from vlft.megatron.checkpoint import copy_processor_files, write_args
    from vlft.megatron.launch import run_conversion
    from vlft.megatron.parallel import ParallelSizes
    from vlft.megatron.plan import plan_to_mcore, record

    output_dir = Path(args.output_dir).expanduser()
    sizes = ParallelSizes(args.tensor_model_parallel_size, args.pipeline_model_parallel_size,
                          args.expert_model_parallel_size, args.expert_tensor_parallel_size)
    model = args.model
    with tempfile.TemporaryDirectory(prefix="vlft-merged-") as scratch:
        if args.adapters:
            from vlft.export.checkpoint import base_model_of, require_lora_checkpoint
            from vlft.export.merge import merge_lora

            checkpoint = Path(args.adapters[0]).expanduser()
            require_lora_checkpoint(checkpoint)
            base_dir = base_model_of(checkpoint, args.model, args.cache_dir, use_hf=args.use_hf,
                                     hub_token=args.hub_token, revision=args.model_revision)
            plan_to_mcore(base_dir, output_dir, sizes, args.torch_dtype, args.test_convert_precision)  # checks
            model, model_dir = args.model or str(base_dir), Path(scratch) / "merged"
            merge_lora(checkpoint, model_dir, base_dir, None, max_shard_size=args.max_shard_size)
        else:
            from vlft.model.hub import resolve_model_dir
            from vlft.paths import cache_root

            model_dir = resolve_model_dir(args.model, use_hf=args.use_hf, cache_root=cache_root(args.cache_dir),
                                          hub_token=args.hub_token, revision=args.model_revision)
        plan = plan_to_mcore(model_dir, output_dir, sizes, args.torch_dtype, args.test_convert_precision)
        output_dir.mkdir(parents=True)
        copy_processor_files(model_dir, output_dir)
        write_args(output_dir, record(plan, model, args.adapters))
        run_conversion(plan)
    source = args.adapters[0] if args.adapters else model
    print(f"converted {source} to Megatron-Core ({sizes.world_size} ranks: TP {sizes.tensor}, "
          f"PP {sizes.pipeline}, EP {sizes.expert}): wrote {output_dir}")
    return output_dir


def to_hf(args: ExportArguments) -> Path:
    """Convert the Megatron-Core checkpoint --mcore_model to an HF model dir in --output_dir."""
    from vlft.megatron.launch import run_conversion
    from vlft.megatron.plan import plan_to_hf

    output_dir = Path(args.output_dir).expanduser()
    plan = plan_to_hf(Path(args.mcore_model).expanduser(), output_dir, args.iteration, args.torch_dtype,
                      args.max_shard_size)
    run_conversion(plan)
    print(f"converted {args.mcore_model} (iteration {plan.iteration}) to HF: wrote {output_dir}")
    return output_dir


def run(argv: list[str]) -> int:
    if "-h" in argv or "--help" in argv:
        build_parser(ExportArguments, "vlft export").print_help()
        return 0
    args = parse_args(ExportArguments, argv, "vlft export")
    if args.to_mcore or args.to_hf:
        (to_mcore if args.to_mcore else to_hf)(args)
        return 0
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
