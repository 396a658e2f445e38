"""Reading a run the web UI started: its new v{N}-{time} dir and the losses of a logging.jsonl being written."""

from __future__ import annotations

import json

from vlft.webui.training_log import loss_points, new_run_dir, version_dirs


def test_new_run_dir_is_the_one_made_after_the_snapshot(tmp_path):
    out = tmp_path / "output"
    assert version_dirs(out) == set()
    (out / "v0-20260101-000000").mkdir(parents=True)
    (out / "notes").mkdir()
    before = version_dirs(out)
    assert before == {"v0-20260101-000000"}
    assert new_run_dir(out, before) is None
    (out / "v9-20260101-000100").mkdir()
    (out / "v10-20260101-000200").mkdir()
    assert new_run_dir(out, before) == out / "v10-20260101-000200"  # by version, not by name


def test_loss_points_skip_a_cut_line_and_records_without_loss(tmp_path):
    log = tmp_path / "logging.jsonl"
    assert loss_points(log) == []
    records = [{"step": 1, "epoch": 0.1, "loss": 2.5, "learning_rate": 1e-4},
               {"step": 2, "epoch": 0.2, "loss": 2.0},
               {"step": 2, "epoch": 0.2, "eval_loss": 2.25},
               {"step": 2, "epoch": 0.2, "train_runtime": 3.0, "train_loss": 2.25}]
    log.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"step": 3, "lo')
    assert loss_points(log) == [(1, 2.5, "train loss"), (2, 2.0, "train loss"), (2, 2.25, "eval loss")]
