"""The run's output dir: `OUTPUT_DIR/v{N}-{YYYYMMDD-HHMMSS}` as ms-swift names it, checked and given args.json;
after a failure removed when it holds nothing, else marked with a FAILED file."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import traceback
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

from vlft.arguments import public_args
from vlft.errors import VlftError

_VERSION_DIR = re.compile(r"^v(\d+)-")
FAILED = "FAILED"  # in a failed run's dir that was kept: when and why it failed


def _next_version(output_dir: Path) -> int:
    if not output_dir.is_dir():
        return 0
    versions = [int(m.group(1)) for p in output_dir.iterdir() if p.is_dir() and (m := _VERSION_DIR.match(p.name))]
    return max(versions, default=-1) + 1


def new_run_dir(output_dir: Path, now: datetime) -> Path:
    """Create and return `output_dir/v{N}-{time}`, N one more than the highest existing version (v0 first)."""
    stamp = now.strftime("%Y%m%d-%H%M%S")
    version = _next_version(output_dir)
    # Two runs started in the same second may pick the same N: the loser of the mkdir takes the next one.
    for _ in range(1000):
        run_dir = output_dir / f"v{version}-{stamp}"
        try:
            run_dir.mkdir(parents=True)
            return run_dir
        except FileExistsError:
            version = max(version + 1, _next_version(output_dir))
    raise VlftError(f"{output_dir}: could not create a new v{{N}}-{stamp} run dir")


def agreed_run_dir(output_dir: Path, now: datetime, is_main: bool) -> Path:
    """The `v{N}-{time}` run dir that rank 0 creates, broadcast to every rank of the process group.

    Nodes of a multi-node launch start their launchers independently and cannot agree on a name
    beforehand; once the process group is up, rank 0 names the run for all of them.
    """
    import torch.distributed as dist

    name = [new_run_dir(output_dir, now).name if is_main else None]
    dist.broadcast_object_list(name, src=0)
    return output_dir / name[0]


def check_writable(output_dir: Path, flag: str = "--output_dir") -> None:
    """Raise VlftError unless a dir can be made in `output_dir` (or, when missing, its nearest existing parent).

    Permissions do not tell it all (root passes os.access under /proc, and in dirs of a read-only mount that
    ignore mode bits), so a dir is made there and removed again."""
    path = Path(output_dir).expanduser().absolute()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise VlftError(f"{flag} {output_dir}: {existing} is not a directory")
    where = "" if existing == path else f" (its parent {existing} is where it would be created)"
    if not os.access(existing, os.W_OK | os.X_OK):
        raise VlftError(f"{flag} {output_dir}: {existing} is not writable{where}")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".vlft-write-check-", dir=existing))
    except OSError as e:
        raise VlftError(f"{flag} {output_dir}: no directory can be made in {existing} ({e.strerror})") from None


def write_args_json(path: Path, args: Any) -> None:
    """Write the run's arguments (secrets such as hub_token left out) to `path` as indented JSON."""
    text = json.dumps(public_args(args), indent=2, ensure_ascii=False, default=str)
    Path(path).write_text(text + "\n", encoding="utf-8")


def holds_results(run_dir: Path) -> bool:
    """Whether a run dir holds what a failed run must keep: a checkpoint (also one whose replacement was cut
    short, `.checkpoint-N.old`) or logged training steps (the loss curve up to the failure)."""
    run_dir = Path(run_dir)
    if any(p.is_dir() for pattern in ("checkpoint-*", ".checkpoint-*.old") for p in run_dir.glob(pattern)):
        return True
    log = run_dir / "logging.jsonl"
    return log.is_file() and log.stat().st_size > 0


def failure_text(error: BaseException) -> str:
    """What a FAILED file says about `error`: a VlftError's message, else its traceback."""
    if isinstance(error, VlftError):
        return str(error)
    if isinstance(error, KeyboardInterrupt):
        return "interrupted (KeyboardInterrupt)"
    return "".join(traceback.format_exception(error)).rstrip()


def finish_failed_run(run_dir: Path, error: str, created: bool) -> str:
    """After a failed run: remove `run_dir` when this run created it and it holds no results, else write FAILED
    (the time and `error`) into it, keeping its name so that paths into it stay valid. Returns a line saying
    which, for the log."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return ""
    if created and not holds_results(run_dir):
        shutil.rmtree(run_dir, ignore_errors=True)
        return f"removed {run_dir}: the run failed before it logged a step or saved a checkpoint"
    try:
        (run_dir / FAILED).write_text(f"vlft sft failed at {datetime.now():%Y-%m-%d %H:%M:%S}:\n{error}\n",
                                      encoding="utf-8")
    except OSError as e:  # the failure may be a full disk
        return f"{run_dir}: kept; could not write {FAILED} ({e.strerror})"
    return f"{run_dir}: kept; {run_dir / FAILED} says why the run failed"


@contextmanager
def failed_run_handled(run_dir: Path, created: bool) -> Iterator[None]:
    """Around a run in `run_dir`: on failure, `finish_failed_run` (logged) before the error goes on; on success,
    a FAILED left by an earlier run in the same dir (a resume under --add_version false) is removed."""
    try:
        yield
    except BaseException as e:
        note = finish_failed_run(run_dir, failure_text(e), created)
        if note:
            logging.getLogger("vlft").warning(note)
        raise
    clear_failed(run_dir)


def clear_failed(run_dir: Path) -> None:
    """Remove the FAILED of an earlier run in `run_dir` (one that a run in the same dir has now completed)."""
    (Path(run_dir) / FAILED).unlink(missing_ok=True)


def link_checkpoints(run_dir: Path, last: Path, best: str | Path | None) -> list[Path]:
    """--create_checkpoint_symlink (ms-swift's): `run_dir/last` and (when evaluation chose one) `run_dir/best`,
    links to the checkpoints: by name when inside the run dir (so it can move), else by absolute path (a best
    checkpoint kept from the run a resume started from). An existing link is replaced, a stale `best` removed; a
    file or dir of that name is left alone with a warning (training has finished by then). Returns the links made."""
    made = []
    for name, target in (("last", last), ("best", best)):
        link = run_dir / name
        if link.exists() and not link.is_symlink():
            logging.getLogger(__name__).warning(f"--create_checkpoint_symlink: {link} is not a link; left alone")
            continue
        if link.is_symlink():
            link.unlink()
        if target is None:
            continue
        target = Path(target)
        inside = target.resolve().parent == run_dir.resolve()
        link.symlink_to(target.name if inside else target.resolve(), target_is_directory=True)
        made.append(link)
    return made
