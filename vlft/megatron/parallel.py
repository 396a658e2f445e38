"""The model-parallel sizes of a Megatron-Core checkpoint and whether a model splits by them (checked from its
config alone, before any weight is read)."""

from __future__ import annotations

from dataclasses import dataclass

from vlft.families.base import Family


@dataclass(frozen=True)
class ParallelSizes:
    """Tensor, pipeline, expert and expert-tensor parallel sizes; a conversion runs one process per
    tensor x pipeline x expert rank."""

    tensor: int = 1
    pipeline: int = 1
    expert: int = 1
    expert_tensor: int = 1

    @property
    def world_size(self) -> int:
        return self.tensor * self.pipeline * self.expert

    def as_args(self) -> dict[str, int]:
        """Megatron-LM's (and ms-swift's) argument names."""
        return {"tensor_model_parallel_size": self.tensor, "pipeline_model_parallel_size": self.pipeline,
                "expert_model_parallel_size": self.expert, "expert_tensor_parallel_size": self.expert_tensor}

    @classmethod
    def from_args(cls, args: dict) -> "ParallelSizes":
        """The sizes recorded under as_args()'s names (missing ones are 1)."""
        return cls(*(int(args.get(name, 1)) for name in cls().as_args()))


def replica_problems(sizes: ParallelSizes, processes: int) -> list[str]:
    """Why `processes` training processes do not fit these sizes (those beyond the model-parallel ranks are
    data-parallel replicas, of the dense layers and of the experts alike); empty when they do."""
    dense, expert = sizes.tensor * sizes.pipeline, sizes.expert_tensor * sizes.expert * sizes.pipeline
    if processes % dense or processes % expert:
        return [f"{processes} processes (NPROC_PER_NODE x NNODES) are not a multiple of tensor x pipeline parallel "
                f"ranks ({dense}) and of expert-tensor x expert x pipeline ranks ({expert})"]
    return []


def split_problems(sizes: ParallelSizes, text_config, family: Family, tied: bool) -> list[str]:
    """Why the model (`tied`: its input and output embeddings are one tensor) does not split by these sizes
    (empty when it does)."""
    tp, pp, ep, etp = sizes.tensor, sizes.pipeline, sizes.expert, sizes.expert_tensor
    heads, groups = text_config.num_attention_heads, text_config.num_key_value_heads
    layers, vocab = text_config.num_hidden_layers, text_config.vocab_size
    moe = family.has_moe_layers(text_config)
    experts = getattr(text_config, "num_experts", 0) if moe else 0
    checks = [
        (heads % tp, f"--tensor_model_parallel_size {tp} does not divide the {heads} attention heads"),
        (groups % tp, f"--tensor_model_parallel_size {tp} does not divide the {groups} key/value heads (query "
                      "groups)"),
        (vocab % tp, f"--tensor_model_parallel_size {tp} does not divide the vocabulary of {vocab} (padding it is "
                     "not supported yet)"),
        (layers % pp, f"--pipeline_model_parallel_size {pp} does not divide the {layers} decoder layers"),
        (not moe and ep > 1, f"--expert_model_parallel_size {ep}: {family.name} has no experts"),
        (moe and experts % ep, f"--expert_model_parallel_size {ep} does not divide the {experts} experts"),
        (tp % etp, f"--expert_tensor_parallel_size {etp} must divide --tensor_model_parallel_size {tp}"),
        (tied and pp > 1,
         "tied input and output embeddings with --pipeline_model_parallel_size above 1 are not supported yet"),
    ]
    if any(not kind.moe for kind in family.decoder_kinds(text_config)):
        ffn = text_config.intermediate_size
        checks.append((ffn % tp, f"--tensor_model_parallel_size {tp} does not divide the MLP size {ffn}"))
    if moe:
        ffn = text_config.moe_intermediate_size
        checks.append((ffn % etp, f"--expert_tensor_parallel_size {etp} does not divide the expert MLP size {ffn}"))
    layout = family.mcore
    if layout is not None and layout.linear_attention is not None:
        for name in ("linear_num_key_heads", "linear_num_value_heads"):
            count = getattr(text_config, name)
            checks.append((count % tp, f"--tensor_model_parallel_size {tp} does not divide the {count} linear-"
                                       f"attention heads ({name})"))
    if moe and layout is not None and layout.shared_expert is not None:
        ffn = text_config.shared_expert_intermediate_size
        checks.append((ffn % tp, f"--tensor_model_parallel_size {tp} does not divide the shared expert's MLP size "
                                 f"{ffn}"))
    return [message for failed, message in checks if failed]
