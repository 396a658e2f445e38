"""The README's Python API example runs as written (on a checkpoint trained by the infer tests'
fixture, in place of the README's placeholder path)."""

from __future__ import annotations

import re

from tests.conftest import REPO


def test_readme_python_example_runs(checkpoint, monkeypatch):
    text = (REPO / "README.md").read_text()
    code = re.search(r"```python\n(from vlft import InferEngine.*?)```", text, re.S).group(1)
    monkeypatch.chdir(REPO)
    exec(compile(code.replace("output/v0-xxx/checkpoint-100", str(checkpoint)), "README.md", "exec"), {})
    # Running without an exception is the check; the answers are compared with HF generate in tests/infer.
