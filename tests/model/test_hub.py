"""`--model` resolution: local dirs are never downloaded; hub ids go to ModelScope, or the HF Hub with
USE_HF. No hub is reachable here, so the hub clients' download functions are replaced by fakes that
record the call and return a local dir."""

from __future__ import annotations

import pytest

from vlft.errors import VlftError
from vlft.model.hub import resolve_model_dir


def test_local_dir_is_used_as_is(tmp_path, monkeypatch):
    import huggingface_hub
    import modelscope

    def fail(*args, **kwargs):
        raise AssertionError("no download for a local dir")

    monkeypatch.setattr(modelscope, "snapshot_download", fail)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fail)
    (tmp_path / "config.json").write_text("{}")
    assert resolve_model_dir(str(tmp_path), use_hf=False, cache_root=tmp_path) == tmp_path


@pytest.mark.parametrize("use_hf", [False, True])
def test_hub_ids_download_from_the_chosen_hub(use_hf, tmp_path, monkeypatch):
    import huggingface_hub
    import modelscope

    calls = []

    def fake(hub):
        def download(model_id, **kwargs):
            calls.append((hub, model_id))
            return str(tmp_path)
        return download

    monkeypatch.setattr(modelscope, "snapshot_download", fake("modelscope"))
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake("hf"))
    resolve_model_dir("Qwen/Qwen3-VL-4B-Instruct", use_hf=use_hf, cache_root=tmp_path)
    assert calls == [("hf" if use_hf else "modelscope", "Qwen/Qwen3-VL-4B-Instruct")]


def test_failed_download_names_the_model_and_hub(tmp_path, monkeypatch):
    import modelscope

    def offline(*args, **kwargs):
        raise ConnectionError("network unreachable")

    monkeypatch.setattr(modelscope, "snapshot_download", offline)
    with pytest.raises(VlftError, match="Qwen/Nope.*ModelScope failed: ConnectionError"):
        resolve_model_dir("Qwen/Nope", use_hf=False, cache_root=tmp_path)
