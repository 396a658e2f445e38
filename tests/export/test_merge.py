"""`vlft export --merge_lora true` on tiny LoRA checkpoints built here (no training run): the merged dir
loads with plain transformers, and its logits equal base + PeftModel's (fp32, 1e-4), ViT LoRA included."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoProcessor

from tests.data.test_encode_parity import SHAPES, make_encoder, to_vlft_row
from vlft.cli.export import run
from vlft.data.formats import to_sample
from vlft.errors import VlftError



def image_logits(model, family, tiny_model_dir, processor_of, media_dir):
    """Logits of one encoded image sample; mm_token_type_ids marks image (1) and video (2) pads."""
    encoder, _, _ = make_encoder(family, tiny_model_dir, processor_of)
    sample = encoder.encode(to_sample(to_vlft_row(SHAPES["one_image"], media_dir)))
    ids = torch.tensor([sample.input_ids])
    types = (ids == encoder.image_pad_id).long() + 2 * (ids == encoder.video_pad_id).long()
    with torch.no_grad():
        return model(input_ids=ids, mm_token_type_ids=types, pixel_values=sample.pixel_values,
                     image_grid_thw=sample.image_grid_thw, use_cache=False).logits[0]


@pytest.mark.parametrize("freeze_vit", [True, False])
def test_merged_model_matches_base_plus_adapter(freeze_vit, lora_checkpoint, tiny_model_dir, processor_of, media_dir):
    ckpt = lora_checkpoint("qwen3_vl", freeze_vit=freeze_vit)
    assert run(["--adapters", str(ckpt), "--merge_lora", "true"]) == 0
    merged_dir = ckpt.parent / "checkpoint-1-merged"
    assert (merged_dir / "generation_config.json").is_file() and (merged_dir / "args.json").is_file()
    assert not (merged_dir / "adapter_config.json").exists()
    assert not [p for p in ckpt.parent.iterdir() if p.name.endswith(".tmp")]
    assert AutoProcessor.from_pretrained(merged_dir).chat_template

    base_dir = tiny_model_dir("qwen3_vl")
    merged = AutoModelForImageTextToText.from_pretrained(merged_dir).eval()
    base = AutoModelForImageTextToText.from_pretrained(base_dir, dtype=torch.float32).eval()
    plain = image_logits(base, "qwen3_vl", tiny_model_dir, processor_of, media_dir)
    reference = image_logits(PeftModel.from_pretrained(base, ckpt).eval(), "qwen3_vl", tiny_model_dir,
                             processor_of, media_dir)
    ours = image_logits(merged, "qwen3_vl", tiny_model_dir, processor_of, media_dir)
    assert (reference - plain).abs().max() > 1e-2  # the adapter changes the output: the check below can fail
    assert (ours - reference).abs().max() <= 1e-4

    weights = load_file(merged_dir / "model.safetensors")
    base_weights = load_file(base_dir / "model.safetensors")
    qkv, patch = "model.visual.blocks.0.attn.qkv.weight", "model.visual.patch_embed.proj.weight"
    assert qkv in weights and patch in weights and not any("lora" in k for k in weights)
    assert torch.equal(weights[patch], base_weights[patch])  # never adapted
    assert torch.equal(weights[qkv], base_weights[qkv]) == freeze_vit  # adapted only with freeze_vit false


def test_merged_moe_expert_lora_matches_base_plus_adapter(lora_checkpoint, tiny_model_dir, processor_of, media_dir):
    """LoRA on the MoE's fused 3-D expert weights merges into those weights."""
    ckpt = lora_checkpoint("qwen3_vl_moe")
    adapter_config = json.loads((ckpt / "adapter_config.json").read_text())
    assert any(name.endswith("mlp.experts.gate_up_proj") for name in adapter_config["target_parameters"])
    assert run(["--adapters", str(ckpt), "--merge_lora", "true"]) == 0
    merged_dir = ckpt.parent / "checkpoint-1-merged"

    base_dir = tiny_model_dir("qwen3_vl_moe")
    base = AutoModelForImageTextToText.from_pretrained(base_dir, dtype=torch.float32).eval()
    plain = image_logits(base, "qwen3_vl_moe", tiny_model_dir, processor_of, media_dir)
    peft_model = PeftModel.from_pretrained(base, ckpt).eval()
    reference = image_logits(peft_model, "qwen3_vl_moe", tiny_model_dir, processor_of, media_dir)
    peft_model.disable_adapter_layers()
    experts_only = {n for n, _ in peft_model.named_parameters() if "lora_" in n and ".experts." in n}
    assert experts_only
    merged = AutoModelForImageTextToText.from_pretrained(merged_dir).eval()
    ours = image_logits(merged, "qwen3_vl_moe", tiny_model_dir, processor_of, media_dir)
    assert (reference - plain).abs().max() > 1e-2
    assert (ours - reference).abs().max() <= 1e-4

    weights, base_weights = load_file(merged_dir / "model.safetensors"), load_file(base_dir / "model.safetensors")
    experts = "model.language_model.layers.0.mlp.experts.gate_up_proj"
    delta = (weights[experts] - base_weights[experts]).double()
    assert delta.abs().max() > 0
    for expert in delta:  # a rank-4 LoRA per expert: each expert's update has rank <= 4
        assert torch.linalg.matrix_rank(expert, atol=1e-6) <= 4
    router = "model.language_model.layers.0.mlp.gate.weight"
    assert torch.equal(weights[router], base_weights[router])  # routers stay frozen by default


def test_adapter_of_another_family_is_refused(lora_checkpoint, tiny_model_dir):
    ckpt = lora_checkpoint("qwen2_vl", freeze_vit=False)
    argv = ["--adapters", str(ckpt), "--merge_lora", "true", "--model", str(tiny_model_dir("qwen3_vl"))]
    with pytest.raises(VlftError, match="Qwen2VLForConditionalGeneration.*does not fit.*"
                                        "Qwen3VLForConditionalGeneration"):
        run(argv)
    # Without PEFT's record of the model class, the module names still tell (Qwen2-VL's ViT has mlp.fc1).
    config = json.loads((ckpt / "adapter_config.json").read_text())
    (ckpt / "adapter_config.json").write_text(json.dumps({**config, "auto_mapping": None}))
    with pytest.raises(VlftError, match=r"does not fit.*target module\(s\) differ:\n.*mlp\.fc1: not in the base"):
        run(argv)
    assert list(ckpt.parent.iterdir()) == [ckpt]  # nothing written, no staging dir left


def test_missing_args_json_needs_model(lora_checkpoint, tiny_model_dir, tmp_path):
    ckpt = lora_checkpoint("qwen3_vl", args_json=False)
    with pytest.raises(VlftError, match="has no args.json.*pass --model"):
        run(["--adapters", str(ckpt), "--merge_lora", "true"])
    out = tmp_path / "out" / "merged"
    assert run(["--adapters", str(ckpt), "--merge_lora", "true", "--model", str(tiny_model_dir("qwen3_vl")),
                "--output_dir", str(out)]) == 0
    assert (out / "config.json").is_file() and not (out / "args.json").exists()


def test_run_dir_args_json_is_read_when_the_checkpoint_has_none(tmp_path):
    from vlft.export.checkpoint import read_checkpoint_args

    (tmp_path / "checkpoint-5").mkdir()
    (tmp_path / "args.json").write_text('{"model": "org/name"}')
    assert read_checkpoint_args(tmp_path / "checkpoint-5") == {"model": "org/name"}


def test_full_and_empty_checkpoints_have_nothing_to_merge(tiny_model_dir, tmp_path):
    with pytest.raises(VlftError, match="not a LoRA checkpoint: nothing to merge .it is a full model dir"):
        run(["--adapters", str(tiny_model_dir("qwen3_vl")), "--merge_lora", "true", "--output_dir",
             str(tmp_path / "x")])
    with pytest.raises(VlftError, match="not a LoRA checkpoint: nothing to merge .no adapter_config.json"):
        run(["--adapters", str(tmp_path), "--merge_lora", "true"])


@pytest.mark.parametrize("argv, message", [
    (["--adapters", "c", "--merge_lora", "true", "--push_to_hub", "true"], "needs --hub_model_id"),
    (["--adapters", "c"], "--merge_lora true is required"),
    (["--merge_lora", "true"], "--adapters is required"),
    (["--adapters", "c", "d", "--merge_lora", "true"], "one checkpoint, got 2"),
])
def test_bad_arguments(argv, message):
    with pytest.raises(VlftError, match=message):
        run(argv)


def test_existing_output_dir_is_never_overwritten(lora_checkpoint, tmp_path):
    ckpt = lora_checkpoint("qwen3_vl")
    with pytest.raises(VlftError, match="exists"):
        run(["--adapters", str(ckpt), "--merge_lora", "true", "--output_dir", str(tmp_path)])


def test_max_shard_size_splits_the_merged_weights_and_keeps_every_tensor(lora_checkpoint, tmp_path):
    """`--max_shard_size` (ms-swift's flag and default, 5GB): the tiny model's 78 MB in shards of at most 30MB
    (a tensor larger than that gets a shard of its own), the same tensors as one file."""
    ckpt = lora_checkpoint("qwen3_vl")
    whole, sharded = tmp_path / "whole", tmp_path / "sharded"
    assert run(["--adapters", str(ckpt), "--merge_lora", "true", "--output_dir", str(whole)]) == 0
    assert run(["--adapters", str(ckpt), "--merge_lora", "true", "--output_dir", str(sharded),
                "--max_shard_size", "30MB"]) == 0
    assert [p.name for p in whole.glob("model*.safetensors")] == ["model.safetensors"]
    shards = sorted(sharded.glob("model-*.safetensors"))
    index = json.loads((sharded / "model.safetensors.index.json").read_text())["weight_map"]
    assert len(shards) >= 3 and sorted(set(index.values())) == [p.name for p in shards]
    for shard in shards:
        tensors = load_file(shard)
        assert len(tensors) == 1 or shard.stat().st_size <= 30 * 10**6 + 10**5
    expected = load_file(whole / "model.safetensors")
    got = {k: v for shard in shards for k, v in load_file(shard).items()}
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in expected)


def hub_cache_with_revisions(root, repo_id, revisions: dict):
    """An HF Hub cache (the layout huggingface_hub reads offline) holding `repo_id` at each named revision."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    for number, (revision, model_dir) in enumerate(revisions.items()):
        commit = f"{number + 1:040x}"
        shutil.copytree(model_dir, repo / "snapshots" / commit)
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / revision).write_text(commit)
    return root


@pytest.mark.parametrize("revision", [None, "v2"])
def test_model_revision_picks_the_base_merged_into(revision, lora_checkpoint, tiny_model_dir, tmp_path, monkeypatch):
    """`--model ORG/NAME --model_revision R` merges into that revision's weights (from the HF cache, offline)."""
    import huggingface_hub.constants
    from safetensors.torch import save_file

    base_dir = tiny_model_dir("qwen3_vl")
    changed = tmp_path / "changed"
    shutil.copytree(base_dir, changed)
    weights = load_file(base_dir / "model.safetensors")
    patch = "model.visual.patch_embed.proj.weight"
    weights[patch] = weights[patch] + 1.0
    save_file(weights, changed / "model.safetensors", metadata={"format": "pt"})
    cache = hub_cache_with_revisions(tmp_path / "hub", "org/tiny", {"main": base_dir, "v2": changed})
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))

    ckpt = lora_checkpoint("qwen3_vl")
    out = tmp_path / "merged"
    argv = ["--adapters", str(ckpt), "--merge_lora", "true", "--model", "org/tiny", "--use_hf", "true",
            "--output_dir", str(out)] + (["--model_revision", revision] if revision else [])
    assert run(argv) == 0
    expected = load_file((changed if revision else base_dir) / "model.safetensors")[patch]
    assert torch.equal(load_file(out / "model.safetensors")[patch], expected)
