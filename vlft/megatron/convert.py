"""The two directions, run in each converter process (vlft/megatron/worker.py): --to_mcore builds this rank's
shard, fills it from the HF files and saves it with the other ranks; --to_hf loads the checkpoint into one whole
model (dist_checkpointing reshards) and writes the HF files."""

from __future__ import annotations

import dataclasses
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

from vlft.errors import VlftError
from vlft.families import get_family
from vlft.megatron import checkpoint
from vlft.megatron.layouts import layout_of
from vlft.megatron.mapping import Names, Shard, hf_language_model, hf_vision, language_model_shard, vision_shard
from vlft.megatron.parallel import ParallelSizes, replica_problems
from vlft.megatron.plan import ConversionPlan, text_and_tied

LANGUAGE, VISION = "language_model.", "visual.visual."


@contextmanager
def model_parallel(sizes: ParallelSizes, device: torch.device, data_parallel: bool = False) -> Iterator[None]:
    """torch.distributed (NCCL when the model is on a GPU, else gloo) and Megatron-Core's parallel groups; with
    `data_parallel`, the processes beyond the model-parallel ranks are data-parallel replicas (training)."""
    import torch.distributed as dist
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import random

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        world = dist.get_world_size()
        if not data_parallel and world != sizes.world_size:
            raise VlftError(f"{world} processes for {sizes.world_size} model-parallel ranks")
        problems = replica_problems(sizes, world) if data_parallel else []
        if problems:
            raise VlftError(problems[0])
        parallel_state.initialize_model_parallel(
            tensor_model_parallel_size=sizes.tensor, pipeline_model_parallel_size=sizes.pipeline,
            expert_model_parallel_size=sizes.expert, expert_tensor_parallel_size=sizes.expert_tensor,
            create_gloo_process_groups=cuda)  # on CPU the groups are gloo already
        # No dropout here: the inference tracker's fork() does nothing (and, unlike the CUDA seed, needs no GPU).
        random.initialize_rng_tracker(inference_rng_tracker=True, force_reset=True)
        yield
    finally:
        if parallel_state.model_parallel_is_initialized():
            parallel_state.destroy_model_parallel()
        dist.destroy_process_group()


class Converter:
    """The model a plan converts, built for this rank."""

    def __init__(self, plan: ConversionPlan, sizes: ParallelSizes, dtype: torch.dtype, device: torch.device,
                 overrides: dict | None = None):
        from megatron.core import parallel_state as ps

        from vlft.megatron.config import mtp_layers, transformer_config
        from vlft.megatron.model import build_model

        self.plan, self.family = plan, get_family(plan.family)
        self.layout = layout_of(self.family)
        self.hf_config, self.text_config, self.tied = text_and_tied(plan.hf_config)
        self.mtp_layers = mtp_layers(self.text_config, self.layout)
        self.names = Names(self.family, self.layout)
        config = transformer_config(self.text_config, self.family, self.layout, sizes, dtype)
        if overrides:  # training settings (vlft/megatron/sft.py)
            config = dataclasses.replace(config, **overrides)
        self.config = config
        first, last = ps.is_pipeline_first_stage(), ps.is_pipeline_last_stage()
        self.device = device
        self.model = build_model(config, self.hf_config, self.family, self.layout, pre_process=first,
                                 post_process=last, device=device).to(device).eval()
        layers = tuple(layer.layer_number - 1 for layer in self.model.language_model.decoder.layers)
        self.shard = Shard(tp_rank=ps.get_tensor_model_parallel_rank(), tp=sizes.tensor,
                           ep_rank=ps.get_expert_model_parallel_rank(), ep=sizes.expert,
                           etp_rank=ps.get_expert_tensor_parallel_rank(), etp=sizes.expert_tensor,
                           layers=layers, first_stage=first, last_stage=last)

    def fill_from_hf(self, model_dir: Path, dtype: torch.dtype) -> None:
        from vlft.megatron.reader import SafetensorsReader

        reader = SafetensorsReader(model_dir, dtype, self.layout.loaded_name)
        language = language_model_shard(reader, self.text_config, self.names, self.shard, self.tied,
                                        self.mtp_layers)
        state = {LANGUAGE + key: value for key, value in language.items()}
        if self.shard.first_stage:
            state.update({VISION + key: value for key, value in vision_shard(reader, self.names).items()})
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        missing = [key for key in missing if not key.endswith("_extra_state")]
        if missing or unexpected:
            raise VlftError(f"{model_dir}: the mapping left Megatron-Core tensors unfilled {missing[:5]} or "
                            f"filled unknown ones {unexpected[:5]}")

    def hf_tensors(self, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        state = {key: value for key, value in self.model.state_dict().items() if not key.endswith("_extra_state")}
        language = {key[len(LANGUAGE):]: value for key, value in state.items() if key.startswith(LANGUAGE)}
        vision = {key[len(VISION):]: value for key, value in state.items() if key.startswith(VISION)}
        tensors = {**hf_language_model(language, self.text_config, self.names, self.tied, self.mtp_layers),
                   **hf_vision(vision, self.names)}
        # safetensors refuses a tensor that shares its memory or covers only part of it (gate and up are views of
        # one linear_fc1): those are copied; whole tensors are written from the model's own memory.
        out, storages = {}, set()
        for key, value in tensors.items():
            value = value.detach().to("cpu", dtype).contiguous()
            storage = value.untyped_storage()
            if storage.data_ptr() in storages or storage.nbytes() != value.nbytes:
                value = value.clone()
            storages.add(value.untyped_storage().data_ptr())
            out[self.layout.file_name(key)] = value
        return out


def to_mcore(plan: ConversionPlan, device: torch.device) -> None:
    dtype = getattr(torch, plan.dtype)
    converter = Converter(plan, plan.sizes, dtype, device)
    converter.fill_from_hf(Path(plan.model_dir), dtype)
    if plan.test_convert_precision:
        from vlft.megatron.precision import report_precision

        report_precision(converter, Path(plan.model_dir), dtype)
    checkpoint.save(converter.model, Path(plan.output_dir), plan.iteration, plan.sizes)


def to_hf(plan: ConversionPlan, device: torch.device) -> None:
    from huggingface_hub import save_torch_state_dict

    output_dir = Path(plan.output_dir)
    converter = Converter(plan, ParallelSizes(), getattr(torch, plan.source_dtype or plan.dtype), device)
    checkpoint.load(converter.model, checkpoint.McoreCheckpoint(Path(plan.mcore_dir), plan.iteration, {}))
    output_dir.mkdir(parents=True)
    save_torch_state_dict(converter.hf_tensors(getattr(torch, plan.dtype)), output_dir,
                          max_shard_size=plan.max_shard_size, metadata={"format": "pt"})
    config = dict(plan.hf_config)
    config["dtype"] = plan.dtype
    (output_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    checkpoint.copy_processor_files(Path(plan.mcore_dir), output_dir)


def run_plan(plan: ConversionPlan) -> None:
    """This rank's part of the plan, in its process group, with Megatron-Core's CPU shims on the CPU.
    --to_mcore puts each rank's shard on its own GPU when there is one per rank on this host (else all ranks run on
    the CPU); --to_hf holds the whole model in host memory (one process, gloo), which a single GPU might not hold."""
    from vlft.megatron.cpu import cpu_shims

    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    to_gpu = plan.direction == "to_mcore" and torch.cuda.is_available() and torch.cuda.device_count() >= local_ranks
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if to_gpu else torch.device("cpu")
    sizes = plan.sizes if plan.direction == "to_mcore" else ParallelSizes()
    with model_parallel(sizes, device), cpu_shims(device), torch.no_grad():
        (to_mcore if plan.direction == "to_mcore" else to_hf)(plan, device)
