"""Run dirs named v{N}-{time} as ms-swift names them, the writability check and args.json."""

from __future__ import annotations

import json
import os
from datetime import datetime

import pytest

import vlft.train.run_dir as run_dir_module
from vlft.arguments import SftArguments
from vlft.errors import VlftError
from vlft.train.run_dir import check_writable, new_run_dir, write_args_json

NOW = datetime(2026, 3, 4, 5, 6, 7)


def test_first_run_is_v0_and_output_dir_is_created(tmp_path):
    run = new_run_dir(tmp_path / "out" / "nested", NOW)
    assert run == tmp_path / "out" / "nested" / "v0-20260304-050607"
    assert run.is_dir()


def test_next_version_is_one_more_than_the_highest(tmp_path):
    for name in ["v0-20250101-000000", "v7-20250101-000000", "v3-x"]:
        (tmp_path / name).mkdir()
    for name in ["vfoo-1", "v-1", "checkpoint-100", "v12"]:  # not v{N}-... dirs
        (tmp_path / name).mkdir()
    (tmp_path / "v99-20250101-000000").write_text("a file, not a run")
    assert new_run_dir(tmp_path, NOW).name == "v8-20260304-050607"
    assert new_run_dir(tmp_path, NOW).name == "v9-20260304-050607"


def test_race_takes_the_next_version(tmp_path, monkeypatch):
    (tmp_path / "v0-20260304-050607").mkdir()  # made by another run after this one chose v0
    calls = []
    real = run_dir_module._next_version

    def stale_then_real(path):
        calls.append(path)
        return 0 if len(calls) == 1 else real(path)

    monkeypatch.setattr(run_dir_module, "_next_version", stale_then_real)
    assert new_run_dir(tmp_path, NOW).name == "v1-20260304-050607"


def test_writable_dirs_pass_and_nothing_is_created(tmp_path):
    check_writable(tmp_path)
    check_writable(tmp_path / "not" / "yet")
    assert not (tmp_path / "not").exists()


def test_path_under_a_file_is_an_error(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(VlftError, match="is not a directory"):
        check_writable(tmp_path / "f" / "out")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes everywhere")
def test_read_only_parent_is_an_error(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        with pytest.raises(VlftError, match="not writable"):
            check_writable(locked / "out")
    finally:
        locked.chmod(0o700)


def test_not_writable_message_names_the_parent(tmp_path, monkeypatch):
    # os.access decides (root passes any chmod, so the refusal is simulated here).
    monkeypatch.setattr(run_dir_module.os, "access", lambda path, mode: False)
    with pytest.raises(VlftError, match=f"{tmp_path} is not writable \\(its parent"):
        check_writable(tmp_path / "out")


def test_args_json_leaves_the_hub_token_out(tmp_path):
    args = SftArguments(model="vlft/tiny-qwen3-vl", dataset=["a.jsonl", "b.jsonl"], hub_token="hf_secret",
                        lora_rank=16)
    write_args_json(tmp_path / "args.json", args)
    text = (tmp_path / "args.json").read_text()
    written = json.loads(text)
    assert "hub_token" not in written and "hf_secret" not in text
    assert written["model"] == "vlft/tiny-qwen3-vl"
    assert written["dataset"] == ["a.jsonl", "b.jsonl"]
    assert written["lora_rank"] == 16 and written["learning_rate"] == 1e-4
    assert text.startswith("{\n  ")  # indented


def test_checkpoint_links_replace_old_links_and_never_a_real_dir(tmp_path, caplog):
    from vlft.train.run_dir import link_checkpoints

    for step in (2, 4):
        (tmp_path / f"checkpoint-{step}").mkdir()
    assert link_checkpoints(tmp_path, tmp_path / "checkpoint-2", None) == [tmp_path / "last"]
    assert not (tmp_path / "best").exists()  # no evaluation, no best
    link_checkpoints(tmp_path, tmp_path / "checkpoint-4", str(tmp_path / "checkpoint-2"))  # a resumed run
    assert (tmp_path / "last").resolve() == tmp_path / "checkpoint-4"
    assert (tmp_path / "best").resolve() == tmp_path / "checkpoint-2"
    link_checkpoints(tmp_path, tmp_path / "checkpoint-4", None)  # this run chose no best: no stale link
    assert not (tmp_path / "best").is_symlink()
    elsewhere = tmp_path / "old-run" / "checkpoint-1"  # a best kept from the run a resume started from
    elsewhere.mkdir(parents=True)
    link_checkpoints(tmp_path, tmp_path / "checkpoint-4", elsewhere)
    assert (tmp_path / "best").readlink() == elsewhere.resolve()
    (tmp_path / "best").unlink()
    (tmp_path / "best").mkdir()
    assert link_checkpoints(tmp_path, tmp_path / "checkpoint-4", elsewhere) == [tmp_path / "last"]
    assert (tmp_path / "best").is_dir() and "is not a link; left alone" in caplog.text
