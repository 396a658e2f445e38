"""Pushing a model dir or a LoRA checkpoint to ModelScope or the HF Hub, with a generated model card.

The token goes to the hub client per call (never through a login, which would store it on disk). What is
uploaded is a staging dir of links to the pushed dir's files plus the generated files (README.md model card,
ModelScope's configuration.json), so the user's dir is never written to.
"""

from __future__ import annotations

import fnmatch
import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import vlft
from vlft.errors import VlftError
from vlft.export.checkpoint import args_json_path, is_full_model_dir
from vlft.export.model_card import hub_base_model, model_card, model_kind

# Trainer state that resumes a run and is no part of a model: left out of the upload. training_args.bin is a
# pickle (unsafe to load from a hub) of transformers' TrainingArguments, which has a hub_token field.
TRAINING_STATE = ("optimizer.pt", "optimizer.bin", "scheduler.pt", "scaler.pt", "rng_state*.pth",
                  "training_args.bin", "latest", "zero_to_fp32.py", "global_step*/*", ".ms_upload_cache",
                  ".ms_upload_progress")
# ms-swift writes this into a dir it pushes to ModelScope when absent: the hub reads the framework and task from it.
MODELSCOPE_CONFIGURATION = {"framework": "pytorch", "task": "text-generation", "allow_remote": True}
# Files under this size are searched for the token before anything is uploaded (weights are not). Tokens
# shorter than TOKEN_SCAN_MIN_CHARS are not searched for: they would match ordinary text ("tok" in "hub_token");
# real hub tokens are over 30 characters.
TOKEN_SCAN_MAX_BYTES = 16 << 20
TOKEN_SCAN_MIN_CHARS = 8
COMMIT_MESSAGE = f"Upload with vlft {vlft.__version__}"


@dataclass(frozen=True)
class PushTarget:
    """Where to push: the repo, the hub (HF with use_hf, else ModelScope), visibility, and the token."""

    repo_id: str
    private: bool
    use_hf: bool
    token: str = field(repr=False)

    @property
    def hub(self) -> str:
        return "the HF Hub" if self.use_hf else "ModelScope"


def files_to_push(folder: Path) -> tuple[list[str], list[str]]:
    """(files pushed, training-state files left out): paths relative to `folder`, sorted; `.git` is skipped."""
    pushed, left_out = [], []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if not path.is_file() or ".git" in path.relative_to(folder).parts:
            continue
        (left_out if any(fnmatch.fnmatch(rel, p) for p in TRAINING_STATE) else pushed).append(rel)
    return pushed, left_out


def is_placeholder_card(path: Path) -> bool:
    """True for the README.md PEFT's save_pretrained writes into every adapter checkpoint (huggingface_hub's
    model card template, unfilled): replacing it loses nothing the user wrote."""
    if path.name != "README.md":
        return False
    text = path.read_text(encoding="utf-8", errors="replace")
    return "[More Information Needed]" in text and "<!-- Provide a quick summary of what the model is" in text


def describe(folder: Path, base_override: str | None, repo_id: str) -> str:
    """The model card for the dir to push; VlftError if it is neither a model dir nor a LoRA checkpoint."""
    is_adapter = (folder / "adapter_config.json").is_file()
    if not is_adapter and not is_full_model_dir(folder):
        raise VlftError(f"{folder}: nothing to push: neither a LoRA checkpoint (adapter_config.json) nor a model "
                        "dir (config.json and weights)")
    args_path = args_json_path(folder)
    args = None
    if args_path is not None:
        try:
            args = json.loads(args_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise VlftError(f"{args_path}: not valid JSON ({e})") from None
    base = base_override or (args or {}).get("model")
    # A base given as a path that exists here is a local dir, whatever its shape: no hub id for the front matter.
    hub_base = hub_base_model(base) is not None and not Path(base).expanduser().exists()
    return model_card(repo_id=repo_id, kind=model_kind(is_adapter, args), base_model=base, hub_base=hub_base,
                      args=args, vlft_version=vlft.__version__)


def stage(folder: Path, staging: Path, generated: dict[str, bytes]) -> list[str]:
    """Fill `staging` with links to the files of `folder` to push, plus `generated` files where the dir has none
    (README.md also over PEFT's placeholder card). Returns notes on what was left out or kept."""
    pushed, left_out = files_to_push(folder)
    notes = [f"left out training state: {', '.join(left_out)}"] if left_out else []
    for rel in pushed:
        target = staging / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to((folder / rel).resolve())
    for name, content in generated.items():
        existing = folder / name
        if existing.is_file() and not is_placeholder_card(existing):
            if name == "README.md":
                notes.append(f"{existing} exists: pushed as is (no model card generated)")
            continue
        (staging / name).unlink(missing_ok=True)
        (staging / name).write_bytes(content)
    return notes


def check_token_absent(staging: Path, token: str) -> None:
    """Raise VlftError naming the file if the token is in any file to upload (weights are not searched)."""
    if len(token) < TOKEN_SCAN_MIN_CHARS:
        return
    needle = token.encode()
    for path in sorted(staging.rglob("*")):
        if path.is_file() and path.stat().st_size <= TOKEN_SCAN_MAX_BYTES and needle in path.read_bytes():
            shown = path.resolve() if path.is_symlink() else path.relative_to(staging)
            raise VlftError(f"{shown} contains the hub token: nothing pushed; remove the token from it")


def push_dir(folder: Path, target: PushTarget, base_override: str | None = None) -> str:
    """Upload `folder` (a model dir or LoRA checkpoint) with a model card to the target repo; returns its URL."""
    check_hub_client(target.use_hf)
    if not folder.is_dir():
        raise VlftError(f"{folder}: no such directory (--push_to_hub uploads a local model dir or checkpoint)")
    generated = {"README.md": describe(folder, base_override, target.repo_id).encode()}
    if not target.use_hf:
        generated["configuration.json"] = json.dumps(MODELSCOPE_CONFIGURATION).encode()
    staging = Path(tempfile.mkdtemp(prefix="vlft-push-"))
    try:
        for note in stage(folder, staging, generated):
            print(note)
        check_token_absent(staging, target.token)
        print(f"pushing {folder} to {target.hub} {target.repo_id} ...", flush=True)
        try:
            return _push_hf(staging, target) if target.use_hf else _push_modelscope(staging, target)
        except VlftError:
            raise
        except Exception as e:  # hub clients raise many types: HTTP status, connection, their own validation
            raise VlftError(push_error(e, folder, target)) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def push_error(e: Exception, folder: Path, target: PushTarget) -> str:
    """The message for a failed push: the hub's status and first line, never the token."""
    status = getattr(e, "status_code", None) or getattr(getattr(e, "response", None), "status_code", None)
    first_line = (str(e).splitlines() or [""])[0]
    if target.token:
        first_line = first_line.replace(target.token, "***")
    hint = {401: f": {target.hub} refused the token; check it is valid and has write access",
            403: f": the token may not write to {target.repo_id}"}.get(status, "")
    return (f"pushing {folder} to {target.hub} {target.repo_id} failed{hint} ({type(e).__name__}"
            + (f" {status}" if status else "") + f": {first_line})")


def check_hub_client(use_hf: bool) -> None:
    """Raise VlftError if the hub's client cannot push (run before any work, such as a merge)."""
    if use_hf:
        from huggingface_hub import constants

        if constants.HF_HUB_OFFLINE:
            raise VlftError("HF_HUB_OFFLINE is set: unset it to push to the HF Hub")
        return
    try:
        import modelscope_hub  # noqa: F401
    except ImportError:
        raise VlftError("pushing to ModelScope needs the modelscope-hub package (a dependency of recent "
                        "modelscope releases): pip install modelscope-hub") from None


def _push_hf(staging: Path, target: PushTarget) -> str:
    """create_repo + upload_folder with the token passed per call; the endpoint is HF_ENDPOINT's."""
    from huggingface_hub import HfApi

    api = HfApi(token=target.token, library_name="vlft", library_version=vlft.__version__)
    url = api.create_repo(target.repo_id, private=target.private, exist_ok=True)
    api.upload_folder(repo_id=url.repo_id, folder_path=staging, commit_message=COMMIT_MESSAGE)
    return str(url)


def _push_modelscope(staging: Path, target: PushTarget) -> str:
    """create_repo + upload_folder through modelscope_hub with the token in its config object (no login(),
    which would write it under ~/.modelscope); the endpoint is MODELSCOPE_ENDPOINT's (or MODELSCOPE_DOMAIN's)."""
    from modelscope_hub import HubApi
    from modelscope_hub.config import HubConfig
    from modelscope_hub.errors import AlreadyExistsError

    config = HubConfig(token=target.token)
    api = HubApi(config=config)
    repo_id = target.repo_id if "/" in target.repo_id else f"{api.whoami().username}/{target.repo_id}"
    try:
        api.create_repo(repo_id, "model", visibility="private" if target.private else "public")
    except AlreadyExistsError:
        pass  # pushing a new revision to an existing repo, as ms-swift does
    # use_cache=False: the resumable-upload cache would otherwise be written into the uploaded folder.
    api.upload_folder(repo_id, "model", staging, commit_message=COMMIT_MESSAGE, use_cache=False)
    return f"{config.endpoint}/models/{repo_id}"
