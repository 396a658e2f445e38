"""Qwen3.5 LoRA side by side on one GPU: `vlft sft` (packed rows, fla's varlen Gated DeltaNet kernels, torch
varlen attention), ms-swift 4.6's `swift sft` and plain transformers + PEFT (padded batches), on a model of a
real Qwen3.5 shape with random bf16 weights, the real Qwen3.5 tokenizer and processor, the data of
bench/sft_qwen3_vl_4b.py and the LoRA settings of bench/compare_peers.py. Each run is measured from outside its
trainer by bench/peers/measure.py; MFU counts FLOPs per decoder layer kind (vlft/train/flops.py).

Shapes (`--shape`):
  4b        Qwen3.5-4B's text model (32 layers = 8 x [linear, linear, linear, full], hidden 2560, MLP 9216,
            16 q / 4 kv heads of 256 with an output gate, linear attention 16 k / 32 v heads of 128, conv 4,
            vocab 248,320, tied embeddings) and Qwen3.5-0.8B's vision tower widened to the 4B's (24 blocks,
            hidden 1024, MLP 4096, 16 heads, out 2560, no DeepStack).
  35b-a3b   Qwen3.5-35B-A3B's layer shape (hidden 2048, 256 experts of 512 top-8 plus a shared expert of 512,
            16 q / 2 kv heads of 256, linear 16 k / 32 v heads of 128, untied embeddings) cut to 8 layers
            (2 x the 3:1 pattern, of 40) so LoRA fits one GPU; a 27-block, 1152-wide vision tower, out 2048.

GPU machine, from the repo root (ms-swift from bench/peers/install_swift.sh; fla is installed beside it):

    source bench/device_env.sh && bash bench/peers/install_swift.sh && \
    python3 bench/sft_qwen3_5.py --shape 4b --workdir /tmp/q35 --peers vlft,vlft-compile,swift,plain

On Hopper with Triton < 3.7.1 (torch 2.11's 3.6.0) and no tilelang, fla 0.6.0 refuses the gated delta rule's
backward (fla-org/flash-linear-attention#640: wrong dg / dbeta there), so every peer fails at its first step;
`--bypass_fla_hopper_guard` times them anyway on a copy of fla without that refusal (timing only).

Peers: vlft, vlft-compile (--torch_compile true), vlft-chunked / vlft-compile-chunked (--chunked_loss true),
vlft-noexperts (MoE: the LoRA targets of swift and plain, i.e. no LoRA on the fused expert weights), swift,
plain. The peers of bench/peers/ read the workdir's model under the name `qwen3-vl-4b-random`; here that name is
a link to the Qwen3.5 model.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "peers"))
from compare_peers import table  # noqa: E402
from measure import run_logged, summarize  # noqa: E402
from sft_qwen3_vl_4b import write_data  # noqa: E402

PEER_MODEL_NAME = "qwen3-vl-4b-random"  # the name bench/peers/ read the workdir's model under
ROPE = {"rope_type": "default", "rope_theta": 1e7, "mrope_section": [11, 11, 10], "mrope_interleaved": True,
        "partial_rotary_factor": 0.25}
# Every LLM linear but the routers, without the MoE experts' fused 3-D weights: what `all-linear` reaches in
# ms-swift and in plain PEFT (both adapt nn.Linear modules only); vlft's `all-linear` adds the experts.
LINEARS_WITHOUT_EXPERTS = (r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|in_proj_qkv|in_proj_z|in_proj_b|"
                           r"in_proj_a|out_proj|gate_proj|up_proj|down_proj)")


def text_shape(shape: str) -> dict:
    """The text config of a benchmark shape (see the module docstring)."""
    common = dict(vocab_size=248320, head_dim=256, linear_conv_kernel_dim=4, linear_key_head_dim=128,
                  linear_value_head_dim=128, linear_num_key_heads=16, linear_num_value_heads=32,
                  attn_output_gate=True, max_position_embeddings=262144, rms_norm_eps=1e-6,
                  rope_parameters=dict(ROPE), mtp_num_hidden_layers=1)
    if shape == "4b":
        return dict(common, hidden_size=2560, intermediate_size=9216, num_hidden_layers=32, layer_types=_pattern(32),
                    num_attention_heads=16, num_key_value_heads=4, tie_word_embeddings=True)
    if shape == "35b-a3b":
        return dict(common, hidden_size=2048, num_hidden_layers=8, layer_types=_pattern(8), num_attention_heads=16,
                    num_key_value_heads=2, num_experts=256, num_experts_per_tok=8, moe_intermediate_size=512,
                    shared_expert_intermediate_size=512, tie_word_embeddings=False)
    raise ValueError(f"unknown shape {shape!r}; known: 4b, 35b-a3b")


def _pattern(layers: int) -> list[str]:
    return (["linear_attention"] * 3 + ["full_attention"]) * (layers // 4)


def vision_shape(shape: str) -> dict:
    common = dict(patch_size=16, temporal_patch_size=2, spatial_merge_size=2, num_position_embeddings=2304,
                  hidden_act="gelu_pytorch_tanh", deepstack_visual_indexes=[])
    if shape == "4b":
        return dict(common, depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16, out_hidden_size=2560)
    return dict(common, depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16, out_hidden_size=2048)


def qwen3_5_config(shape: str):
    """The transformers config of a shape, on Qwen3.5's real special-token ids."""
    import transformers

    from vlft.families.tokenizers import QWEN3_5_VOCAB as vocab

    text = text_shape(shape)
    cls = transformers.Qwen3_5MoeConfig if "num_experts" in text else transformers.Qwen3_5Config
    return cls(text_config=text, vision_config=vision_shape(shape), tie_word_embeddings=text["tie_word_embeddings"],
               image_token_id=vocab.id_of("<|image_pad|>"), video_token_id=vocab.id_of("<|video_pad|>"),
               vision_start_token_id=vocab.id_of("<|vision_start|>"),
               vision_end_token_id=vocab.id_of("<|vision_end|>"))


def build_model(model_dir: Path, shape: str) -> dict:
    """Random bf16 weights of the shape (made on the GPU), the real Qwen3.5 tokenizer and processor; returns
    the parameter counts."""
    import torch
    from transformers import AutoModelForImageTextToText

    from vlft.families.tokenizers import QWEN3_5_VOCAB
    from vlft.model.tiny import build_processor
    from vlft.model.tokenizer import build_qwen_tokenizer

    counts_file = model_dir / "parameter_counts.json"
    if counts_file.is_file():
        return json.loads(counts_file.read_text())
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # the MoE shape in fp32 first would double its 17 GB
    try:
        with torch.device("cuda"):
            model = AutoModelForImageTextToText.from_config(qwen3_5_config(shape))
    finally:
        torch.set_default_dtype(default)
    model.save_pretrained(model_dir)
    build_processor("qwen3_5", build_qwen_tokenizer(QWEN3_5_VOCAB)).save_pretrained(model_dir)
    counts = {"total": sum(p.numel() for p in model.parameters()),
              "vision": sum(p.numel() for p in model.model.visual.parameters())}
    counts_file.write_text(json.dumps(counts))
    del model
    torch.cuda.empty_cache()
    return counts


def shape_workdir(root: Path, shape: str, samples: int) -> Path:
    """root/<shape>/ holding the model, data/ (shared by the shapes) and the peers' name for the model."""
    workdir = root / shape
    workdir.mkdir(parents=True, exist_ok=True)
    write_data(root / "data", samples)
    for name, target in ((PEER_MODEL_NAME, workdir / f"qwen3.5-{shape}-random"), ("data", root / "data")):
        if not (workdir / name).exists():
            (workdir / name).symlink_to(target)
    return workdir


def fla_without_hopper_guard(root: Path) -> Path:
    """A dir holding a copy of the installed fla whose gated chunk_bwd_dqkwg no longer refuses Hopper with
    Triton >= 3.4, < 3.7.1 (fla 0.6.0 raises there: fla-org/flash-linear-attention#640, whose dg / dbeta are wrong
    on those versions; the fix is Triton >= 3.7.1 or tilelang). For timing only: the kernels do the work of a
    correct run, but the gradients are not to be trusted. Put first on PYTHONPATH."""
    import importlib.util
    import shutil

    target = root / "fla_no_hopper_guard"
    if not (target / "fla").is_dir():
        shutil.copytree(Path(importlib.util.find_spec("fla").origin).parent, target / "fla")
        source = target / "fla" / "ops" / "common" / "chunk_o.py"
        guard = "IS_NVIDIA_HOPPER and TRITON_ABOVE_3_4_0 and not TRITON_ABOVE_3_7_1"
        text = source.read_text()
        if guard not in text:
            raise RuntimeError(f"{source}: the Hopper guard of fla 0.6.0 is not there")
        source.write_text(text.replace(guard, "False"))
    return target


def with_path_first(env: dict, first: Path | None) -> dict:
    if first is None:
        return env
    return {**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(first), env.get("PYTHONPATH", "")]))}


def run_vlft(workdir: Path, max_length: int, steps: int, warmup_steps: int, num_workers: int, name: str,
             flags: list[str], settings: str, fla_dir: Path | None = None) -> dict:
    """`vlft sft` (LoRA r8/32 dropout 0, packing, padding-free) with extra `flags`, under measure.py's hooks."""
    from transformers import AutoConfig

    output = workdir / ("runs_" + name.replace(" ", "_").replace("-", ""))
    output.mkdir(parents=True, exist_ok=True)
    records, log = output / "records.json", output / "vlft.log"
    command = [sys.executable, str(HERE / "peers" / "measured_run.py"), str(records), "vlft.cli.main", "sft",
               "--model", str(workdir / PEER_MODEL_NAME), "--dataset", str(workdir / "data" / "train.jsonl"),
               "--train_type", "lora", "--lora_rank", "8", "--lora_alpha", "32", "--lora_dropout", "0",
               "--freeze_vit", "true", "--freeze_aligner", "true", "--torch_dtype", "bfloat16",
               "--packing", "true", "--max_length", str(max_length), "--gradient_checkpointing", "true",
               "--max_steps", str(steps), "--learning_rate", "1e-4", "--logging_steps", "1", "--save_steps", "100000",
               "--dataset_num_proc", "4", "--dataloader_num_workers", str(num_workers), "--report_to", "none",
               "--output_dir", str(output), *flags]
    if "--target_modules" not in flags:
        command += ["--target_modules", "all-linear"]
    started = time.time()
    run_logged(command, log, name, cwd=workdir, env=with_path_first(dict(os.environ), fla_dir))
    run_dir = max(output.glob("v*-*"), key=lambda p: p.stat().st_mtime)
    losses = [json.loads(line)["loss"] for line in open(run_dir / "logging.jsonl") if '"loss"' in line]
    config = AutoConfig.from_pretrained(workdir / PEER_MODEL_NAME)
    result = summarize(json.loads(records.read_text()), warmup_steps, config)
    result.update(name=name, wall_s=time.time() - started, loss_first=losses[0], loss_last=losses[-1],
                  settings=settings)
    return result


def give_swift_fla(swift_site: str) -> str:
    """fla beside ms-swift (the carried .whl/ wheels), as ms-swift asks for Qwen3.5; what its probe reports."""
    wheels = sorted(str(p) for pattern in ("fla_core-*.whl", "flash_linear_attention-*.whl", "einops-*.whl")
                    for p in (HERE.parent / ".whl").glob(pattern))
    if wheels:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--no-cache-dir", "--upgrade", "--target", swift_site, *wheels], check=True)
    from swift_sft import swift_env

    link_tilelang(Path(swift_site))
    probe = subprocess.run([sys.executable, "-c", "import importlib.util, fla, transformers; "
                            "tl = importlib.util.find_spec('tilelang') is not None; "
                            "print(f'fla {fla.__version__} (tilelang: {tl}) | "
                            "transformers {transformers.__version__}')"],
                           env=swift_env(swift_site), capture_output=True, text=True)
    return (probe.stdout or probe.stderr).strip().splitlines()[-1]


TILELANG_PARTS = ("tilelang", "tvm_ffi", "apache_tvm_ffi", "z3", "z3_solver")  # bench/stage_tilelang.sh's tree


def link_tilelang(swift_site: Path) -> None:
    """Links tilelang (unpacked into vlft's site by bench/device_env.sh) into ms-swift's dir, so that fla there
    takes the same Hopper backward as vlft's (without it fla 0.6.0 refuses the gated backward on Hopper)."""
    spec = importlib.util.find_spec("tilelang")
    if spec is None or spec.origin is None:
        return
    site = Path(spec.origin).parent.parent
    for part in TILELANG_PARTS:
        for entry in site.glob(f"{part}*"):
            link = swift_site / entry.name
            if not link.exists():
                link.symlink_to(entry)


def run_swift(workdir: Path, model_type: str, max_length: int, steps: int, warmup_steps: int, num_workers: int,
              batch_size: int = 4, fla_dir: Path | None = None) -> dict:
    """`swift sft --model_type/--template qwen3_5[_moe]` with swift_sft.py's settings (padded batches, sdpa:
    its packing needs flash-attn), under measure.py's hooks, in ms-swift's own environment."""
    from transformers import AutoConfig

    from swift_sft import absolute_images, swift_command, swift_env

    site = os.environ.get("SWIFT_SITE", "/tmp/swift_site")
    fla_note = give_swift_fla(site)
    print(f"ms-swift's environment: {fla_note}", flush=True)
    output = workdir / "runs_swift"
    output.mkdir(parents=True, exist_ok=True)
    records, log = output / "records.json", output / "swift.log"
    data = absolute_images(workdir / "data" / "train.jsonl")
    command = swift_command(workdir / PEER_MODEL_NAME, data, output, max_length, steps, "sdpa", batch_size,
                            num_workers, 4, cuda=True, lora_dropout=0.0, logging_steps=1)
    command[command.index("--model_type") + 1] = model_type
    command[command.index("--template") + 1] = "qwen3_5"  # ms-swift 4.6's one template for qwen3_5 and qwen3_5_moe
    started = time.time()
    run_logged([sys.executable, str(HERE / "peers" / "measured_run.py"), str(records), *command], log, "swift sft",
               env=with_path_first(swift_env(site), fla_dir), cwd=workdir)
    run_dir = max(output.glob("v*-*"), key=lambda p: p.stat().st_mtime)
    logs = [json.loads(line) for line in (run_dir / "logging.jsonl").read_text().splitlines()]
    losses = [e["loss"] for e in logs if "loss" in e]
    config = AutoConfig.from_pretrained(workdir / PEER_MODEL_NAME)
    result = summarize(json.loads(records.read_text()), warmup_steps, config)
    result.update(name="ms-swift 4.6", wall_s=time.time() - started, loss_first=losses[0], loss_last=losses[-1],
                  settings=f"padded batches of {batch_size}, sdpa, {fla_note.split(' |')[0]} "
                           "(packing/padding_free need flash-attn)")
    return result


PLAIN_TRAIN = """import sys
sys.path.insert(0, {peers!r})
from pathlib import Path
import plain_hf_peft
plain_hf_peft.LORA_TARGETS = {targets!r}  # its own list knows Qwen3-VL's linears, not the Gated DeltaNet's
plain_hf_peft.train(Path({workdir!r}), {max_length}, {steps}, {batch_size}, {num_workers}, Path({records!r}), 0.0, 1)
"""


def run_plain(workdir: Path, max_length: int, steps: int, warmup_steps: int, num_workers: int,
              batch_size: int = 4, fla_dir: Path | None = None) -> dict:
    """bench/peers/plain_hf_peft.py's training (padded batches, sdpa, stock transformers layers: fla's chunked
    delta rule where fla is installed) with Qwen3.5's linears as LoRA targets."""
    from transformers import AutoConfig

    output = workdir / "runs_plain"
    output.mkdir(parents=True, exist_ok=True)
    records, log = output / "records.json", output / "plain.log"
    script = PLAIN_TRAIN.format(peers=str(HERE / "peers"), targets=LINEARS_WITHOUT_EXPERTS, workdir=str(workdir),
                                max_length=max_length, steps=steps, batch_size=batch_size, num_workers=num_workers,
                                records=str(records))
    started = time.time()
    run_logged([sys.executable, "-c", script], log, "plain transformers + PEFT run",
               env=with_path_first(dict(os.environ), fla_dir))
    recorded = json.loads(records.read_text())
    result = summarize(recorded, warmup_steps, AutoConfig.from_pretrained(workdir / PEER_MODEL_NAME))
    result.update(name="transformers + PEFT", wall_s=time.time() - started, loss_first=recorded["losses"][0],
                  loss_last=recorded["losses"][-1], settings=f"padded batches of {batch_size}, sdpa")
    return result


def run_peer(peer: str, workdir: Path, model_type: str, args, fla_dir: Path | None) -> dict:
    common = (workdir, args.max_length, args.max_steps, args.warmup_steps, args.num_workers)
    if peer == "swift":
        return run_swift(workdir, model_type, *common[1:], fla_dir=fla_dir)
    if peer == "plain":
        return run_plain(*common, fla_dir=fla_dir)
    known = ("vlft", "vlft-compile", "vlft-chunked", "vlft-compile-chunked", "vlft-noexperts")
    if peer not in known:
        raise ValueError(f"unknown peer {peer!r}; known: {', '.join(known)}, swift, plain")
    flags, notes = [], [f"packing, fla varlen linear attention, torch varlen attention, 1 row of {args.max_length}"]
    if "compile" in peer:
        flags += ["--torch_compile", "true"]
    if peer.endswith("chunked"):
        flags += ["--chunked_loss", "true"]
        notes.append("chunked loss")
    if peer == "vlft-noexperts":
        flags += ["--target_modules", LINEARS_WITHOUT_EXPERTS]
        notes.append("LoRA targets of swift/plain (no expert weights)")
    elif model_type == "qwen3_5_moe":
        notes.append("LoRA also on the 3-D expert weights")
    name = " ".join(["vlft", *[f for f in flags if f.startswith("--") and f != "--target_modules"]])
    name += " (no experts)" if peer == "vlft-noexperts" else ""
    return run_vlft(*common, name=name, flags=flags, settings=", ".join(notes), fla_dir=fla_dir)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=("4b", "35b-a3b"), default="4b")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/q35"))
    parser.add_argument("--samples", type=int, default=400)
    parser.add_argument("--max_length", type=int, default=4096)
    parser.add_argument("--max_steps", type=int, default=30)
    parser.add_argument("--warmup_steps", type=int, default=5)
    parser.add_argument("--num_workers", type=int, default=4)
    parser.add_argument("--peers", default="vlft,vlft-compile,swift,plain")
    parser.add_argument("--bypass_fla_hopper_guard", action="store_true",
                        help="timing only: every peer runs a copy of fla without its refusal of Triton < 3.7.1 on "
                             "Hopper (see fla_without_hopper_guard)")
    args = parser.parse_args()
    from matmul_peak import measured_bf16_peak

    measured_peak = measured_bf16_peak()
    print(f"measured bf16 matmul peak: {measured_peak / 1e12:.0f} TFLOP/s", flush=True)
    started = time.time()
    workdir = shape_workdir(args.workdir, args.shape, args.samples)
    counts = build_model(workdir / f"qwen3.5-{args.shape}-random", args.shape)
    config = qwen3_5_config(args.shape)
    print(f"shape {args.shape}: {counts['total'] / 1e9:.2f} B parameters ({counts['vision'] / 1e6:.0f} M vision); "
          f"text {json.dumps(text_shape(args.shape))}; vision {json.dumps(vision_shape(args.shape))}; "
          f"ready in {time.time() - started:.0f} s", flush=True)
    fla_dir = fla_without_hopper_guard(args.workdir) if args.bypass_fla_hopper_guard else None
    if fla_dir:
        print(f"TIMING ONLY: fla's Hopper guard (Triton < 3.7.1, fla#640) bypassed for every peer: {fla_dir}",
              flush=True)
    results, out = [], os.environ.get("OUT")
    for peer in args.peers.split(","):
        started = time.time()
        try:
            result = run_peer(peer, workdir, config.model_type, args, fla_dir)
        except (RuntimeError, subprocess.CalledProcessError) as error:
            print(f"{peer}: FAILED after {time.time() - started:.0f} s\n{error}", flush=True)
            continue
        if result.get("flops_per_second"):
            result["mfu_measured_peak"] = result["flops_per_second"] / measured_peak
        results.append(result)
        print(f"{peer}: done in {time.time() - started:.0f} s\n{json.dumps(result, default=str)}", flush=True)
        if out:  # after each peer, so a run cut short still leaves what it measured
            Path(out, f"sft_qwen3_5_{args.shape}.json").write_text(json.dumps(results, indent=2, default=str))
    print(f"\nshape {args.shape}, measured bf16 matmul peak {measured_peak / 1e12:.0f} TFLOP/s\n")
    if results:
        print(table(results))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))  # vlft's flops for MFU when run from a checkout
    sys.exit(main())
