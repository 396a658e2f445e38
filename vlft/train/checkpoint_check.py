"""A checkpoint checked before a resume reads it: every file the resume loads is there and whole, and its weights
fit the model being trained. Otherwise a half-copied or corrupted checkpoint fails deep inside transformers,
PEFT, DeepSpeed or torch.load with a traceback, or resumes quietly with a fresh optimizer or an untrained adapter
(transformers skips a missing optimizer.pt or adapter file with a log line). Each problem is a VlftError naming
the checkpoint, the file, what is wrong and what to do. The file checks read headers only (safetensors' JSON
header, a zip's central directory), so they cost milliseconds on a checkpoint of any size."""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlft.errors import VlftError

if TYPE_CHECKING:
    from vlft.arguments import SftArguments

TRAINER_STATE = "trainer_state.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
MODEL_WEIGHTS = "model.safetensors"
MODEL_INDEX = "model.safetensors.index.json"
OPTIMIZER = "optimizer.pt"
SCHEDULER = "scheduler.pt"
FSDP_MODEL = "pytorch_model_fsdp.bin"  # FSDP's (accelerate's) full model state, beside the safetensors weights
FSDP_OPTIMIZER = "optimizer.bin"
LATEST = "latest"  # DeepSpeed's file naming the global_step* dir that a resume loads
ZERO_SHARD = re.compile(r"zero_pp_rank_(\d+)_mp_rank_\d+_(optim|model)_states\.pt$")
SAME_ARGUMENTS = "resume with the arguments of the run that saved it (its args.json)"


def checkpoint_error(checkpoint: Path, name: str, problem: str, remedy: str | None = None) -> VlftError:
    """`--resume_from_checkpoint DIR: FILE: problem; what to do` (by default: resume from another checkpoint)."""
    return VlftError(f"--resume_from_checkpoint {checkpoint}: {name}: {problem}; "
                     f"{remedy or other_checkpoints(checkpoint)}")


def _step(path: Path) -> int:
    tail = path.name.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else -1


def other_checkpoints(checkpoint: Path) -> str:
    """What to do instead: resume from another published checkpoint of the run (newest first; those inside
    `checkpoint` when it is the run dir itself), or start over."""
    run = checkpoint if any(checkpoint.glob("checkpoint-*")) else checkpoint.parent
    others = sorted((p for p in run.glob("checkpoint-*")
                     if p.name != checkpoint.name and (p / TRAINER_STATE).is_file()), key=_step, reverse=True)
    if not others:
        return (f"{run} holds no other checkpoint: train again without --resume_from_checkpoint, "
                "or copy the checkpoint again")
    return "resume from another checkpoint of the run (newest first): " + ", ".join(str(p) for p in others)


def _read_json(checkpoint: Path, name: str) -> Any:
    path = checkpoint / name
    if not path.is_file():
        raise checkpoint_error(checkpoint, name, "missing")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise checkpoint_error(checkpoint, name, f"not valid JSON ({e}): cut short or corrupted") from None


def check_checkpoint_files(checkpoint: Path, args: SftArguments, ds_config: dict | None) -> None:
    """VlftError unless every file a resume of `checkpoint` reads under these arguments is there and whole."""
    state = _read_json(checkpoint, TRAINER_STATE)
    step = state.get("global_step") if isinstance(state, dict) else None
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise checkpoint_error(checkpoint, TRAINER_STATE, "no global_step (the step to resume from): cut short "
                                                          "or not written by a trainer")
    if _saved_arg(checkpoint, "save_only_model") == "True":
        raise checkpoint_error(checkpoint, OPTIMIZER, "not saved: the run wrote its checkpoints with --save_only_model "
                                                      "true (the weights alone: no optimizer, scheduler or RNG states "
                                                      "to resume)",
                               "train on from its weights in a new run (LoRA: vlft export --adapters CKPT --merge_lora "
                               "true, then --model the merged dir; full: --model CKPT)")
    if args.train_type == "lora":
        _check_adapter(checkpoint, args, required=_weights_saved(ds_config))
    else:
        _check_full_weights(checkpoint, required=_weights_saved(ds_config))
    if getattr(args, "fsdp", None):
        _check_fsdp_states(checkpoint)
    elif ds_config is None:
        _check_torch_states(checkpoint)
    else:
        _check_deepspeed_states(checkpoint, ds_config)
    for name in _rng_files(checkpoint):
        check_torch_file(checkpoint, name)


def safetensors_shapes(checkpoint: Path, name: str) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape, from the header of the safetensors file `name`; VlftError if it is missing, cut
    short (its size must be 8 + the header's length + the end of the last tensor's data) or not safetensors."""
    path = checkpoint / name
    if not path.is_file():
        raise checkpoint_error(checkpoint, name, "missing")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        header_len = int.from_bytes(head, "little")
        if len(head) < 8 or header_len > size - 8:
            raise checkpoint_error(checkpoint, name, f"cut short or not a safetensors file: {size} bytes, too few "
                                                     "for its header (a half-copied file?)")
        try:
            header = json.loads(f.read(header_len))
            tensors = {k: v for k, v in header.items() if k != "__metadata__"}
            shapes = {k: tuple(int(d) for d in v["shape"]) for k, v in tensors.items()}
            end = max((int(v["data_offsets"][1]) for v in tensors.values()), default=0)
        except (ValueError, UnicodeDecodeError, AttributeError, TypeError, KeyError, IndexError):
            raise checkpoint_error(checkpoint, name, "not a safetensors file (its header is not a tensor table): "
                                                     "corrupted") from None
    if size != 8 + header_len + end:
        how = "cut short" if size < 8 + header_len + end else "corrupted"
        raise checkpoint_error(checkpoint, name, f"{how}: {size} bytes, its header describes {8 + header_len + end} "
                                                 "(a half-copied file?)")
    return shapes


def check_torch_file(checkpoint: Path, name: str) -> None:
    """VlftError unless `name` is a whole torch.save file (a zip: a file cut short has lost its central
    directory, which sits at the end)."""
    path = checkpoint / name
    if not path.is_file():
        raise checkpoint_error(checkpoint, name, "missing")
    try:
        with zipfile.ZipFile(path) as archive:
            whole = any(n.endswith("data.pkl") for n in archive.namelist())
    except (zipfile.BadZipFile, OSError, ValueError):
        whole = False
    if not whole:
        raise checkpoint_error(checkpoint, name, f"cut short or corrupted: {path.stat().st_size} bytes, not a whole "
                                                 "torch.save file (a half-copied file?)")


def _check_adapter(checkpoint: Path, args: SftArguments, required: bool) -> None:
    if not (checkpoint / ADAPTER_CONFIG).is_file() and _has_full_weights(checkpoint):
        raise checkpoint_error(checkpoint, ADAPTER_CONFIG, "missing: this is a full model's checkpoint "
                                                           "(--train_type full), not a LoRA adapter",
                               "resume with --train_type full")
    config = _read_json(checkpoint, ADAPTER_CONFIG)
    if not isinstance(config, dict):
        raise checkpoint_error(checkpoint, ADAPTER_CONFIG, "not a LoRA config (a JSON object): corrupted")
    rank, dora = config.get("r"), bool(config.get("use_dora"))
    if rank != args.lora_rank:
        raise checkpoint_error(checkpoint, ADAPTER_CONFIG, f"a LoRA of rank {rank}; this run trains rank "
                                                           f"{args.lora_rank}", f"resume with --lora_rank {rank}")
    if dora != args.use_dora:
        raise checkpoint_error(checkpoint, ADAPTER_CONFIG, f"use_dora {dora}; this run has --use_dora "
                                                           f"{args.use_dora}", f"resume with --use_dora {dora}")
    if required or (checkpoint / ADAPTER_WEIGHTS).exists():
        safetensors_shapes(checkpoint, ADAPTER_WEIGHTS)


def _has_full_weights(checkpoint: Path) -> bool:
    return (checkpoint / MODEL_WEIGHTS).is_file() or (checkpoint / MODEL_INDEX).is_file()


def _weights_saved(ds_config: dict | None) -> bool:
    """False only under ZeRO-3 without stage3_gather_16bit_weights_on_model_save (only DeepSpeed's shards hold
    the weights then; vlft's built-in zero3 configs gather them)."""
    zero = (ds_config or {}).get("zero_optimization", {})
    return int(zero.get("stage", 0)) != 3 or bool(zero.get("stage3_gather_16bit_weights_on_model_save", False))


def _check_full_weights(checkpoint: Path, required: bool) -> None:
    if (checkpoint / ADAPTER_CONFIG).is_file() and not _has_full_weights(checkpoint):
        raise checkpoint_error(checkpoint, MODEL_WEIGHTS, "missing: this is a LoRA checkpoint (adapter_config.json), "
                                                          "not a full model's", "resume with --train_type lora")
    if (checkpoint / MODEL_WEIGHTS).is_file():  # what transformers loads when it is there
        safetensors_shapes(checkpoint, MODEL_WEIGHTS)
    if (checkpoint / MODEL_INDEX).is_file():
        for shard, keys in _index_shards(checkpoint).items():
            if not (checkpoint / shard).is_file():
                raise checkpoint_error(checkpoint, shard, f"missing ({MODEL_INDEX} puts {len(keys)} tensors in it)")
            lost = sorted(keys - safetensors_shapes(checkpoint, shard).keys())
            if lost:
                raise checkpoint_error(checkpoint, shard, f"lacks {len(lost)} tensors that {MODEL_INDEX} puts in it "
                                                          f"(e.g. {lost[0]})")
    elif required and not (checkpoint / MODEL_WEIGHTS).is_file():
        raise checkpoint_error(checkpoint, MODEL_WEIGHTS, f"missing (and no {MODEL_INDEX}): no model weights")


def _index_shards(checkpoint: Path) -> dict[str, set[str]]:
    """Shard file -> the tensor names the index puts in it."""
    index = _read_json(checkpoint, MODEL_INDEX)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise checkpoint_error(checkpoint, MODEL_INDEX, "no weight_map: cut short or corrupted")
    shards: dict[str, set[str]] = {}
    for key, shard in weight_map.items():
        shards.setdefault(str(shard), set()).add(key)
    return shards


def _check_torch_states(checkpoint: Path) -> None:
    """optimizer.pt and scheduler.pt (transformers resumes with a fresh optimizer, without a word, when they are
    missing); a DeepSpeed checkpoint holds them in a global_step* dir instead."""
    if any(p.is_dir() for p in checkpoint.glob("global_step*")) and not (checkpoint / OPTIMIZER).is_file():
        raise checkpoint_error(checkpoint, OPTIMIZER, "missing: the checkpoint was saved under DeepSpeed (its "
                                                      "optimizer state is in global_step*/)",
                               f"resume with --deepspeed {_deepspeed_of(checkpoint)}, as the run that saved it")
    if (checkpoint / FSDP_MODEL).is_file() and not (checkpoint / OPTIMIZER).is_file():
        raise checkpoint_error(checkpoint, OPTIMIZER, f"missing: the checkpoint was saved under FSDP (its optimizer "
                                                      f"state is {FSDP_OPTIMIZER})",
                               f"resume with --fsdp {_saved_arg(checkpoint, 'fsdp')}, as the run that saved it")
    for name in (OPTIMIZER, SCHEDULER):
        check_torch_file(checkpoint, name)


def _deepspeed_of(checkpoint: Path) -> str:
    """The --deepspeed of the run that saved `checkpoint` (its args.json), else '...'."""
    return _saved_arg(checkpoint, "deepspeed")


def _saved_arg(checkpoint: Path, name: str) -> str:
    """The --`name` of the run that saved `checkpoint` (its args.json), else '...'."""
    try:
        return str(json.loads((checkpoint / "args.json").read_text(encoding="utf-8")).get(name) or "...")
    except (OSError, ValueError, AttributeError):
        return "..."


def _check_fsdp_states(checkpoint: Path) -> None:
    """FSDP's model and optimizer states (accelerate's files) and the scheduler, all whole."""
    if not (checkpoint / FSDP_MODEL).is_file():
        raise checkpoint_error(checkpoint, FSDP_MODEL, "missing: the checkpoint was not saved under --fsdp, and "
                                                       "--fsdp resumes only from FSDP's state",
                               "resume without --fsdp, as the run that saved it")
    for name in (FSDP_MODEL, FSDP_OPTIMIZER, SCHEDULER):
        check_torch_file(checkpoint, name)


def _check_deepspeed_states(checkpoint: Path, ds_config: dict) -> None:
    """`latest` names a global_step* dir whose model and optimizer shards are all there and whole."""
    steps = sorted(p.name for p in checkpoint.glob("global_step*") if p.is_dir())
    if not steps:
        raise checkpoint_error(checkpoint, "global_step*", "missing: the checkpoint was not saved under DeepSpeed, "
                                                           "and --deepspeed resumes only from DeepSpeed's state",
                               "resume without --deepspeed, as the run that saved it")
    latest = checkpoint / LATEST
    tag = latest.read_text(encoding="utf-8", errors="replace").strip() if latest.is_file() else None
    if tag is None:
        raise checkpoint_error(checkpoint, LATEST, f"missing: DeepSpeed reads in it which of {', '.join(steps)} "
                                                   "to resume")
    if not tag or "/" in tag or not (checkpoint / tag).is_dir():
        raise checkpoint_error(checkpoint, LATEST, f"names {tag!r}, which is not a dir of the checkpoint (it has "
                                                   f"{', '.join(steps)})")
    shards = sorted(p.name for p in (checkpoint / tag).glob("*.pt"))
    if not any(name.endswith("model_states.pt") for name in shards):
        raise checkpoint_error(checkpoint, f"{tag}/", "holds no *model_states.pt: cut short")
    ranks: dict[str, set[int]] = {}
    for name in shards:
        if match := ZERO_SHARD.search(name):
            ranks.setdefault(f"{match.group(2)} states", set()).add(int(match.group(1)))
    world = max((max(found) + 1 for found in ranks.values()), default=1)
    for kind, found in sorted(ranks.items()):
        if lost := sorted(set(range(world)) - found):
            raise checkpoint_error(checkpoint, f"{tag}/", f"lacks the ZeRO {kind} of rank(s) "
                                                          f"{', '.join(map(str, lost))} of {world} (a half-copied "
                                                          "checkpoint?)")
    for name in shards:
        check_torch_file(checkpoint, f"{tag}/{name}")
    if "scheduler" not in ds_config:  # transformers' own scheduler, saved beside DeepSpeed's state
        check_torch_file(checkpoint, SCHEDULER)


def _rng_files(checkpoint: Path) -> list[str]:
    """rng_state.pth (one process) or rng_state_{rank}.pth; a missing one resumes with other random numbers
    (other dropout masks and data order), which transformers only logs."""
    names = sorted(p.name for p in checkpoint.glob("rng_state*.pth"))
    if not names:
        raise checkpoint_error(checkpoint, "rng_state.pth", "missing (nor rng_state_{rank}.pth): the resumed run "
                                                            "would not draw the random numbers the run would have")
    return names


def check_fits_model(checkpoint: Path, model) -> None:
    """VlftError unless the checkpoint's weights have the names and shapes of `model`'s (another LoRA rank,
    other target modules or freeze flags, another base model), read from the safetensors headers before
    transformers loads them: PEFT fails on a size mismatch with a traceback and skips other modules' adapters
    without a word. Then the optimizer state must cover as many tensors as the model trains."""
    checkpoint = Path(checkpoint)
    if hasattr(model, "peft_config") and (checkpoint / ADAPTER_WEIGHTS).is_file():
        expected, name = _adapter_shapes(model), ADAPTER_WEIGHTS
    elif (checkpoint / MODEL_WEIGHTS).is_file():
        expected, name = _parameter_shapes(model), MODEL_WEIGHTS
    else:
        return
    found = safetensors_shapes(checkpoint, name)
    differ = sorted(k for k in found.keys() & expected.keys() if found[k] != expected[k])
    if differ:
        k, other = differ[0], "another LoRA rank or base model" if name == ADAPTER_WEIGHTS else "another base model"
        raise checkpoint_error(checkpoint, name, f"{len(differ)} tensor(s) of another shape than the model being "
                                                 f"trained has (e.g. {k}: {list(found[k])} here, {list(expected[k])} "
                                                 f"in the model): {other}",
                               f"{SAME_ARGUMENTS}, or start a new run without --resume_from_checkpoint")
    if name == ADAPTER_WEIGHTS:
        _check_same_adapter_tensors(checkpoint, set(found), set(expected))
    elif not found.keys() & expected.keys():
        raise checkpoint_error(checkpoint, name, "none of its tensors is a parameter of the model being trained: "
                                                 "another model", f"{SAME_ARGUMENTS} (its --model)")
    _check_optimizer_fits(checkpoint, model)


def _check_same_adapter_tensors(checkpoint: Path, found: set[str], expected: set[str]) -> None:
    lost = sorted(expected - found)
    extra = sorted(k for k in found - expected if "lora_" in k)
    if lost or extra:
        what = (f"no adapter for {len(lost)} of the LoRA tensors this run trains (e.g. {lost[0]})" if lost else
                f"{len(extra)} LoRA tensors of modules this run does not adapt (e.g. {extra[0]})")
        raise checkpoint_error(checkpoint, ADAPTER_WEIGHTS, f"{what}: trained with other --target_modules, freeze "
                                                            "flags or base model",
                               f"{SAME_ARGUMENTS}, or start a new run without --resume_from_checkpoint")


def _check_optimizer_fits(checkpoint: Path, model) -> None:
    """optimizer.pt's parameter groups list every tensor the run that saved it trained (torch refuses to load
    them into an optimizer of other sizes, with a traceback); mmap reads only the pickled structure."""
    import torch

    if not (checkpoint / OPTIMIZER).is_file():  # DeepSpeed keeps its own
        return
    try:
        groups = torch.load(checkpoint / OPTIMIZER, map_location="cpu", mmap=True, weights_only=True)["param_groups"]
        saved = sum(len(group["params"]) for group in groups)
    except Exception as e:  # any unpickling failure: the file is not an optimizer state a resume can load
        raise checkpoint_error(checkpoint, OPTIMIZER, f"cannot be read ({type(e).__name__}: {e})") from None
    trained = sum(1 for p in model.parameters() if p.requires_grad)
    if saved != trained:
        raise checkpoint_error(checkpoint, OPTIMIZER, f"the state of {saved} trained tensors; this run trains "
                                                      f"{trained}: other freeze flags, --target_modules or "
                                                      "--modules_to_save",
                               f"{SAME_ARGUMENTS}, or start a new run without --resume_from_checkpoint")


def _parameter_shapes(model) -> dict[str, tuple[int, ...]]:
    """Parameter name -> full shape (ZeRO-3 keeps the full shape in ds_shape; the tensor itself is a shard)."""
    return {n: tuple(getattr(p, "ds_shape", p.shape)) for n, p in model.named_parameters(remove_duplicate=False)}


def _adapter_shapes(model) -> dict[str, tuple[int, ...]]:
    """Name -> shape of each tensor PEFT saves (and loads) for the model's adapter, from shape-only tensors."""
    import torch
    from peft import get_peft_model_state_dict

    meta = {n: torch.empty(shape, device="meta") for n, shape in _parameter_shapes(model).items()}
    state = get_peft_model_state_dict(model, state_dict=meta, save_embedding_layers=False)
    return {n: tuple(t.shape) for n, t in state.items()}
