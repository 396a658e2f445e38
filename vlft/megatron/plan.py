"""A conversion, checked before any weight is read: the model's family has a mapping, it splits by the
parallel sizes, the folders are what they should be. The plan is what the converter processes are given."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from vlft.errors import VlftError
from vlft.export.checkpoint import check_output_dir
from vlft.families import detect_family, get_family
from vlft.megatron import checkpoint, require_megatron
from vlft.megatron.layouts import layout_of
from vlft.megatron.parallel import ParallelSizes, split_problems

Direction = Literal["to_mcore", "to_hf"]


@dataclass(frozen=True)
class ConversionPlan:
    """One conversion, as the converter processes read it (JSON)."""

    direction: Direction
    family: str
    hf_config: dict  # the source model's config.json
    output_dir: str
    dtype: str  # torch dtype name
    sizes: ParallelSizes = field(default_factory=ParallelSizes)
    model_dir: str | None = None  # to_mcore: the HF model read
    mcore_dir: str | None = None  # to_hf: the checkpoint read
    source_dtype: str | None = None  # to_hf: the dtype the checkpoint holds
    iteration: int = checkpoint.DEFAULT_ITERATION
    test_convert_precision: bool = False
    max_shard_size: str = "5GB"

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "ConversionPlan":
        values = json.loads(text)
        values["sizes"] = ParallelSizes(**values["sizes"])
        return cls(**values)


def text_and_tied(hf_config: dict):
    """The transformers config of a recorded config.json: (config, its text config, tied embeddings)."""
    from transformers import CONFIG_MAPPING

    config = CONFIG_MAPPING[hf_config["model_type"]].from_dict(hf_config)
    text = getattr(config, "text_config", config)
    return config, text, bool(getattr(config, "tie_word_embeddings", False))


def _config_dtype(hf_config: dict) -> str:
    for config in (hf_config, hf_config.get("text_config") or {}):
        for key in ("dtype", "torch_dtype"):
            if config.get(key) in ("float32", "bfloat16", "float16"):
                return config[key]
    return "float32"


def plan_to_mcore(model_dir: Path, output_dir: Path, sizes: ParallelSizes, dtype: str | None,
                  test_convert_precision: bool) -> ConversionPlan:
    family = detect_family(Path(model_dir))  # names a missing or unsupported config.json
    hf_config = json.loads((Path(model_dir) / "config.json").read_text())
    layout_of(family)
    require_megatron()
    _, text_config, tied = text_and_tied(hf_config)
    problems = split_problems(sizes, text_config, family, tied)
    if test_convert_precision and sizes.pipeline > 1:
        problems.append("--test_convert_precision true compares logits with --pipeline_model_parallel_size 1 only")
    if problems:
        raise VlftError("; ".join(problems))
    check_output_dir(Path(output_dir))
    return ConversionPlan("to_mcore", family.name, hf_config, str(output_dir), dtype or _config_dtype(hf_config),
                          sizes, model_dir=str(model_dir), test_convert_precision=test_convert_precision)


def plan_to_hf(mcore_dir: Path, output_dir: Path, iteration: int | None, dtype: str | None,
               max_shard_size: str) -> ConversionPlan:
    found = checkpoint.read_checkpoint(mcore_dir, iteration)
    hf_config = found.args["hf_config"]
    family = get_family(found.args.get("family") or hf_config.get("model_type", ""))
    layout_of(family)
    require_megatron()
    check_output_dir(Path(output_dir))
    saved = found.args.get("dtype") or _config_dtype(hf_config)
    return ConversionPlan("to_hf", family.name, hf_config, str(output_dir), dtype or saved, found.sizes,
                          mcore_dir=str(found.root), source_dtype=saved, iteration=found.iteration,
                          max_shard_size=max_shard_size)


def model_record(plan: ConversionPlan) -> dict:
    """What a checkpoint's args.json records of its model for --to_hf and --load: the family, dtype, parallel sizes
    (Megatron-LM's names) and the source config.json, which --to_hf writes back."""
    return {"family": plan.family, "model_type": plan.hf_config.get("model_type"), "dtype": plan.dtype,
            **plan.sizes.as_args(), "hf_config": plan.hf_config}


def record(plan: ConversionPlan, model: str | None, adapters: list[str]) -> dict:
    """args.json of the checkpoint a to_mcore plan writes: the --model and --adapters given, the iteration, and
    model_record's."""
    return {"model": model, "adapters": list(adapters), "iteration": plan.iteration, **model_record(plan)}
