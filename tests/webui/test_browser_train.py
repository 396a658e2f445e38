"""The training tab in headless Chromium: a 3-step LoRA run of the tiny Qwen3-VL on the example data, started from
the form; the command is shown, the run finishes and the loss plot draws the logged steps."""

from __future__ import annotations

import json
import re

from tests.conftest import REPO
from tests.webui.browser import screenshot_path

DATASET = REPO / "examples/data/train.jsonl"
EXTRA_FLAGS = "--logging_steps 1 --report_to none --image_max_token_num 16 --image_min_token_num 4"


def test_training_run_draws_its_loss(page, tmp_path):
    from playwright.sync_api import expect

    page.get_by_role("tab", name="Train").click()
    page.locator("#train-model textarea").fill("vlft/tiny-qwen3-vl")
    page.locator("#train-dataset textarea").fill(str(DATASET))
    page.locator("#train-max-steps input").fill("3")
    page.locator("#train-output-dir textarea").fill(str(tmp_path / "output"))
    page.locator("#train-extra textarea").fill(EXTRA_FLAGS)
    page.locator("#train-start").click()
    command = page.locator("#train-command textarea")
    expect(command).to_have_value(re.compile("^vlft sft --model vlft/tiny-qwen3-vl --dataset "))
    page.locator("#train-status").get_by_text("finished").wait_for(timeout=120_000)
    # Vega draws the curve as one path through the logged steps: three points, two segments.
    line = page.locator("#train-loss .mark-line path").first
    expect(line).to_have_attribute("d", re.compile(r"^M[^L]*L[^L]*L[^L]*$"))
    expect(page.locator("#train-log textarea")).to_have_value(re.compile("last checkpoint: .*checkpoint-3"))
    (run_dir,) = (tmp_path / "output").glob("v0-*")
    logged = [json.loads(line) for line in (run_dir / "logging.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "loss" in r] == [1, 2, 3]
    assert "--max_steps 3" in command.input_value()
    page.screenshot(path=str(screenshot_path(tmp_path, "webui_train.png")), full_page=True)
