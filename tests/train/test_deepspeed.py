"""Built-in DeepSpeed configs: each loads with the right stage, and ZeRO really trains with HF Trainer on CPU."""

from __future__ import annotations

import json
import math
import socket

import pytest
import torch

from vlft.errors import VlftError
from vlft.train.deepspeed import BUILTIN_CONFIGS, resolve_deepspeed_config

STAGES = {"zero0": 0, "zero1": 1, "zero2": 2, "zero2_offload": 2, "zero3": 3, "zero3_offload": 3}


@pytest.mark.parametrize("name", BUILTIN_CONFIGS)
def test_builtin_config(name):
    config = resolve_deepspeed_config(name)
    zero = config["zero_optimization"]
    assert zero["stage"] == STAGES[name]
    for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
                "gradient_clipping"):
        assert config[key] == "auto"
    assert config["bf16"]["enabled"] == "auto" and config["fp16"]["enabled"] == "auto"
    assert config["zero_force_ds_cpu_optimizer"] is False
    offloaded = {key for key in ("offload_optimizer", "offload_param") if zero.get(key, {}).get("device") == "cpu"}
    expected = {"zero2_offload": {"offload_optimizer"}, "zero3_offload": {"offload_optimizer", "offload_param"}}
    assert offloaded == expected.get(name, set())
    assert all(zero[key]["pin_memory"] is True for key in offloaded)
    if zero["stage"] == 3:
        assert zero["stage3_gather_16bit_weights_on_model_save"] is True


def test_none_means_no_deepspeed():
    assert resolve_deepspeed_config(None) is None


def test_each_call_returns_a_fresh_dict():
    resolve_deepspeed_config("zero2")["zero_optimization"]["stage"] = 99
    assert resolve_deepspeed_config("zero2")["zero_optimization"]["stage"] == 2


def test_json_path(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 1}, "train_batch_size": "auto"}))
    assert resolve_deepspeed_config(str(path)) == {"zero_optimization": {"stage": 1}, "train_batch_size": "auto"}


def test_missing_file_names_it_and_lists_the_builtins(tmp_path):
    with pytest.raises(VlftError) as error:
        resolve_deepspeed_config(str(tmp_path / "zero4.json"))
    assert "zero4.json" in str(error.value) and "no such file" in str(error.value)
    assert all(name in str(error.value) for name in BUILTIN_CONFIGS)


@pytest.mark.parametrize("text", ["{not json", "[1, 2]"])
def test_bad_json_is_an_error(tmp_path, text):
    path = tmp_path / "ds.json"
    path.write_text(text)
    with pytest.raises(VlftError, match="ds.json"):
        resolve_deepspeed_config(str(path))


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(config)


class _RepeatedBatch(torch.utils.data.Dataset):
    """The same row again and again, so every step sees the same batch."""

    row = torch.tensor([3, 14, 15, 9, 26, 5, 35, 8, 9, 7, 9, 3, 2, 38, 4, 6])

    def __len__(self):
        return 64

    def __getitem__(self, index):
        return {"input_ids": self.row, "labels": self.row}


def _reference_losses(steps: int, lr: float) -> list[float]:
    """Plain torch: AdamW (HF Trainer's defaults: no weight decay) with grad-norm clipping at 1.0."""
    model = _tiny_llama()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    batch = {key: value.repeat(2, 1) for key, value in _RepeatedBatch()[0].items()}
    losses = []
    for _ in range(steps):
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


@pytest.fixture
def single_process_distributed(monkeypatch):
    """torchrun's variables for one process; accelerate's and HF's DeepSpeed globals reset afterwards."""
    from accelerate.state import AcceleratorState
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}.items():
        monkeypatch.setenv(key, value)
    # TrainingArguments(deepspeed=...) sets ACCELERATE_USE_DEEPSPEED=true in os.environ; setting it here makes
    # monkeypatch restore the old value (delenv of an absent variable records nothing to restore).
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "false")
    # Without it accelerate calls torch.set_num_threads for "multi-CPU", which would outlive this test.
    monkeypatch.setenv("OMP_NUM_THREADS", str(torch.get_num_threads()))
    AcceleratorState._reset_state(True)
    yield
    unset_hf_deepspeed_config()
    AcceleratorState._reset_state(True)
    # The gloo process group stays: DeepSpeed caches its groups, so a destroyed one breaks later engines.


@pytest.mark.slow
@pytest.mark.timeout(600)  # the first DeepSpeed engine on a machine compiles a CPU comm op (~40 s)
@pytest.mark.filterwarnings("ignore:`torch.distributed.*` is deprecated:FutureWarning")
def test_every_builtin_config_trains_on_cpu_like_plain_torch(tmp_path, single_process_distributed):
    from transformers import Trainer, TrainingArguments

    steps, lr = 3, 1e-2
    expected = _reference_losses(steps, lr)
    assert expected[-1] < expected[0]
    for name in BUILTIN_CONFIGS:
        # TrainingArguments first: with ZeRO-3 it tells transformers to partition models built after it.
        args = TrainingArguments(output_dir=str(tmp_path / name), deepspeed=resolve_deepspeed_config(name),
                                 use_cpu=True, per_device_train_batch_size=2, max_steps=steps, learning_rate=lr,
                                 lr_scheduler_type="constant", optim="adamw_torch", logging_steps=1,
                                 save_strategy="no", report_to=[], disable_tqdm=True)
        trainer = Trainer(model=_tiny_llama(), args=args, train_dataset=_RepeatedBatch())
        assert trainer.is_deepspeed_enabled
        trainer.train()
        assert trainer.model_wrapped.zero_optimization_stage() == STAGES[name]
        losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
        assert len(losses) == steps and all(math.isfinite(loss) for loss in losses), (name, losses)
        assert losses[-1] < losses[0], (name, losses)
        assert losses == pytest.approx(expected, rel=1e-4), (name, losses, expected)
