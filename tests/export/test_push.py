"""`vlft export --push_to_hub`: end to end against a local fake of the HF Hub / ModelScope upload APIs
(tests/export/fake_hub.py), run as the real CLI in a subprocess whose HOME and caches are temp dirs. Checks that
every file arrives byte-identical (weights through LFS), the repo's visibility, the model card, that the token
reached the server only as the Authorization header, and that it is written nowhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from huggingface_hub import ModelCard, ModelCardData
from modelscope_hub.config import HubConfig, set_default_config
from safetensors.numpy import save_file

from tests.conftest import REPO
from tests.export.fake_hub import USERNAME, FakeHub, Repo
from vlft.arguments import public_args
from vlft.cli.export import run
from vlft.cli.parsing import parse_args
from vlft.errors import VlftError
from vlft.export.arguments import ExportArguments
from vlft.export.model_card import model_card
from vlft.export.push import stage

TOKEN = "vlft-test-token-7f3a9c2e"
# What transformers' Trainer saves into a checkpoint to resume a run: never pushed.
TRAINER_STATE = {"optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin", "scaler.pt"}


@pytest.fixture
def hub():
    server = FakeHub(token=TOKEN).start()
    yield server
    server.stop()


@pytest.fixture
def model_dir(tmp_path) -> Path:
    """A full model dir as `vlft sft --train_type full` leaves it: config, 3 MB of safetensors, args.json, and
    trainer state."""
    d = tmp_path / "v0-20260101-000000" / "checkpoint-10"
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"model_type": "qwen3_vl", "architectures": ["X"]}))
    save_file({"w": np.random.default_rng(0).standard_normal((768, 1024)).astype(np.float32)},
              str(d / "model.safetensors"))
    (d / "args.json").write_text(json.dumps({"model": "Qwen/Qwen3-VL-2B-Instruct", "train_type": "full",
                                             "learning_rate": 1e-5, "max_new_tokens": 64, "hub_token": None}))
    (d / "processor").mkdir()
    (d / "processor" / "chat_template.jinja").write_text("{{ messages }}")
    (d / "optimizer.pt").write_bytes(b"\0" * 1000)
    return d


def run_export(argv: list[str], tmp_path: Path, hub: FakeHub, **env: str) -> subprocess.CompletedProcess:
    """`vlft export ARGV` in a subprocess: HOME, caches and TMPDIR in tmp_path/"home", both hubs' endpoints at
    the fake, no token in the environment unless given."""
    home = tmp_path / "home"
    (home / "tmp").mkdir(parents=True, exist_ok=True)
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("HF_", "HUGGINGFACE", "MODELSCOPE", "USE_HF", "XDG_"))}
    base.update(HOME=str(home), HF_HOME=str(home / "hf"), MODELSCOPE_CACHE=str(home / "ms-cache"),
                XDG_CACHE_HOME=str(home / "cache"), TMPDIR=str(home / "tmp"), HF_ENDPOINT=hub.url,
                MODELSCOPE_ENDPOINT=hub.url, HF_HUB_DISABLE_XET="1",  # the plain LFS path, which the fake speaks
                HF_HUB_DISABLE_TELEMETRY="1", **env)
    return subprocess.run([sys.executable, "-m", "vlft.cli.main", "export", *argv], cwd=REPO, env=base,
                          capture_output=True, text=True, timeout=300)


def listing(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_token_nowhere(output: str, *dirs: Path) -> None:
    """The token is in no output and no file under `dirs` (HOME, caches, TMPDIR, the pushed dir)."""
    assert TOKEN not in output
    for d in dirs:
        for path in d.rglob("*"):
            if path.is_file() and not path.is_symlink():
                assert TOKEN.encode() not in path.read_bytes(), f"the token was written to {path}"


def assert_token_only_as_bearer(hub: FakeHub) -> None:
    assert hub.authorizations, "no authenticated request reached the fake hub"
    assert {header for _, header in hub.authorizations} == {f"Bearer {TOKEN}"}
    assert not hub.token_in_url_or_body


def card_of(files: dict[str, bytes]) -> ModelCard:
    text = files["README.md"].decode()
    assert TOKEN not in text and "hub_token" not in text
    return ModelCard(text)


@pytest.mark.slow
def test_push_model_dir_to_hf(hub, model_dir, tmp_path):
    before = listing(model_dir)
    result = run_export(["--model", str(model_dir), "--push_to_hub", "true", "--hub_model_id", "org/vlft-model",
                         "--hub_token", TOKEN, "--hub_private_repo", "true", "--use_hf", "true"], tmp_path, hub)
    assert result.returncode == 0, result.stderr
    assert "left out training state: optimizer.pt" in result.stdout

    repo = hub.repos["org/vlft-model"]
    assert repo.private and hub.create_bodies[0]["visibility"] == "private"
    expected = {rel: data for rel, data in before.items() if rel not in TRAINER_STATE}
    assert set(repo.files) == set(expected) | {"README.md"}
    assert all(repo.files[rel] == data for rel, data in expected.items())
    assert hub.lfs_paths == {"model.safetensors"}  # the weights went through LFS, not inline

    card = card_of(repo.files)
    assert card.data.base_model == "Qwen/Qwen3-VL-2B-Instruct"
    assert card.data.library_name == "transformers" and "vlft" in card.data.tags
    assert '"train_type": "full"' in card.text and '"max_new_tokens": 64' in card.text
    assert "fine-tuned from `Qwen/Qwen3-VL-2B-Instruct`" in card.text

    assert listing(model_dir) == before  # the user's dir is never written to
    assert not list((tmp_path / "home" / "tmp").iterdir())  # nor is the staging dir left behind
    assert_token_only_as_bearer(hub)
    assert_token_nowhere(result.stdout + result.stderr, tmp_path)


@pytest.mark.slow
def test_push_adapter_checkpoint_to_modelscope(hub, checkpoint, tmp_path):
    """ms-swift's `swift export --model CKPT --push_to_hub true` (the seed's command) with a LoRA checkpoint:
    pushed as an adapter; a bare NAME goes to the token's namespace; the token comes from MODELSCOPE_API_TOKEN."""
    before = listing(checkpoint)
    # What the test exercises: PEFT's placeholder card and the Trainer's resume state are in the checkpoint.
    assert "[More Information Needed]" in before["README.md"].decode() and TRAINER_STATE & set(before)
    result = run_export(["--model", str(checkpoint), "--push_to_hub", "true", "--hub_model_id", "vlft-adapter"],
                        tmp_path, hub, MODELSCOPE_API_TOKEN=TOKEN)
    assert result.returncode == 0, result.stderr

    repo = hub.repos[f"{USERNAME}/vlft-adapter"]
    assert not repo.private and hub.create_bodies[0]["Visibility"] == 5  # ModelScope's public
    expected = {rel: data for rel, data in before.items() if rel not in TRAINER_STATE and rel != "README.md"}
    assert set(repo.files) == set(expected) | {"README.md", "configuration.json"}
    assert all(repo.files[rel] == data for rel, data in expected.items())
    assert "adapter_model.safetensors" in hub.lfs_paths
    assert json.loads(repo.files["configuration.json"])["framework"] == "pytorch"

    # PEFT's placeholder README in the checkpoint is replaced by vlft's card.
    card = card_of(repo.files)
    assert "More Information Needed" not in card.text
    assert card.data.library_name == "peft" and "lora" in card.data.tags
    assert card.data.base_model is None  # vlft/tiny-qwen3-vl is on no hub: named in the text only
    assert "a LoRA adapter for `vlft/tiny-qwen3-vl`" in card.text and '"train_type": "lora"' in card.text

    assert listing(checkpoint) == before
    assert_token_only_as_bearer(hub)
    assert_token_nowhere(result.stdout + result.stderr, tmp_path)


@pytest.mark.slow
def test_merge_then_push_to_an_existing_hf_repo(hub, checkpoint, tmp_path):
    hub.repos["org/merged"] = Repo(private=True, files={"notes.txt": b"an earlier commit"})
    merged = tmp_path / "merged"
    result = run_export(["--adapters", str(checkpoint), "--merge_lora", "true", "--output_dir", str(merged),
                         "--push_to_hub", "true", "--hub_model_id", "org/merged", "--use_hf", "true"],
                        tmp_path, hub, HF_TOKEN=TOKEN)
    assert result.returncode == 0, result.stderr
    repo = hub.repos["org/merged"]
    assert repo.private and repo.commits == 1  # an existing repo keeps its visibility and its files
    expected = listing(merged)
    assert "model.safetensors" in expected and "adapter_config.json" not in expected
    assert set(repo.files) == set(expected) | {"README.md", "notes.txt"}
    assert all(repo.files[rel] == data for rel, data in expected.items())
    assert "model.safetensors" in hub.lfs_paths
    card = card_of(repo.files)
    assert card.data.library_name == "transformers"
    assert "`vlft/tiny-qwen3-vl` with a LoRA adapter merged into its weights" in card.text
    assert_token_only_as_bearer(hub)
    assert_token_nowhere(result.stdout + result.stderr, tmp_path)


def test_push_to_an_existing_modelscope_repo_in_process(hub, model_dir, tmp_path, monkeypatch, capsys):
    """In-process: modelscope_hub reads its endpoint and home when a HubApi is made, not at import."""
    for name, value in {"MODELSCOPE_ENDPOINT": hub.url, "HOME": str(tmp_path / "home"),
                        "MODELSCOPE_HOME": str(tmp_path / "home" / ".modelscope"),
                        "MODELSCOPE_CACHE": str(tmp_path / "home" / "ms-cache")}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("MODELSCOPE_DOMAIN", raising=False)
    hub.repos["org/m"] = Repo(private=False, files={"notes.txt": b"an earlier commit"})
    # The process-wide default config (it names the dir of the client's session id) is made from this
    # environment now, and cleared after, so no other test inherits it.
    set_default_config(HubConfig())
    try:
        assert run(["--model", str(model_dir), "--push_to_hub", "true", "--hub_model_id", "org/m", "--hub_token",
                    TOKEN, "--hub_private_repo", "true"]) == 0
    finally:
        set_default_config(None)
    repo = hub.repos["org/m"]
    assert not repo.private and {"notes.txt", "model.safetensors", "README.md", "configuration.json"} <= set(
        repo.files)
    assert repo.files["model.safetensors"] == (model_dir / "model.safetensors").read_bytes()
    assert_token_only_as_bearer(hub)
    output = capsys.readouterr()
    assert_token_nowhere(output.out + output.err, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("use_hf", ["true", "false"])
def test_rejected_token_is_a_clear_error_without_the_token(use_hf, model_dir, tmp_path):
    hub = FakeHub(token="the-token-the-hub-knows").start()
    try:
        result = run_export(["--model", str(model_dir), "--push_to_hub", "true", "--hub_model_id", "org/m",
                             "--hub_token", TOKEN, "--use_hf", use_hf], tmp_path, hub)
    finally:
        hub.stop()
    assert result.returncode == 2
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("vlft export: error: pushing") and "refused the token" in error and "401" in error
    assert "Traceback" not in result.stderr
    assert not hub.repos and hub.authorizations  # it did reach the server, and nothing was created
    assert_token_nowhere(result.stdout + result.stderr, tmp_path)


@pytest.mark.parametrize("argv, environ, message", [
    (["--model", "d", "--push_to_hub", "true", "--hub_token", "t"], {}, "needs --hub_model_id"),
    (["--model", "d", "--push_to_hub", "true", "--hub_model_id", "o/n"], {}, "needs a token.*MODELSCOPE_API_TOKEN"),
    (["--model", "d", "--push_to_hub", "true", "--hub_model_id", "o/n", "--use_hf", "true"],
     {"MODELSCOPE_API_TOKEN": "t"}, "needs a token with write access to the HF Hub.*HF_TOKEN"),
    (["--model", "d", "--push_to_hub", "true", "--hub_model_id", "o/n/x", "--hub_token", "t"], {}, "not a repo id"),
    (["--push_to_hub", "true", "--hub_model_id", "o/n", "--hub_token", "t"], {}, "needs what to push"),
    (["--model", "d", "--merge_lora", "true", "--push_to_hub", "true", "--hub_model_id", "o/n", "--hub_token",
      "t"], {}, "--adapters is required with --merge_lora"),
    (["--model", "d"], {}, "nothing to do: --merge_lora true is required to merge.*--push_to_hub true"),
])
def test_bad_push_arguments(argv, environ, message):
    with pytest.raises(VlftError, match=message):
        parse_args(ExportArguments, argv, "vlft export", environ=environ)


def test_token_from_the_environment_is_secret():
    args = parse_args(ExportArguments, ["--model", "d", "--push_to_hub", "true", "--hub_model_id", "o/n",
                                        "--use_hf", "true"], "vlft export", environ={"HF_TOKEN": TOKEN})
    assert args.hub_token == TOKEN
    assert TOKEN not in repr(args) and TOKEN not in json.dumps(public_args(args))


def test_nothing_is_pushed_from_a_dir_holding_the_token(model_dir):
    (model_dir / "notes.txt").write_text(f"my token is {TOKEN}\n")
    with pytest.raises(VlftError, match="notes.txt contains the hub token: nothing pushed") as error:
        run(["--model", str(model_dir), "--push_to_hub", "true", "--hub_model_id", "o/n", "--hub_token", TOKEN])
    assert TOKEN not in str(error.value)


def test_hf_offline_mode_is_reported_before_any_work(tmp_path):
    # The tests run with HF_HUB_OFFLINE=1 (conftest): a merge-then-push stops before looking at the checkpoint.
    out = tmp_path / "merged"
    with pytest.raises(VlftError, match="HF_HUB_OFFLINE is set: unset it to push"):
        run(["--adapters", str(tmp_path / "ckpt"), "--merge_lora", "true", "--output_dir", str(out), "--push_to_hub",
             "true", "--hub_model_id", "o/n", "--hub_token", "t", "--use_hf", "true"])
    assert not out.exists()


def test_a_dir_that_is_no_model_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(VlftError, match="nothing to push: neither a LoRA checkpoint .* nor a model dir"):
        run(["--model", str(tmp_path), "--push_to_hub", "true", "--hub_model_id", "o/n", "--hub_token", "t"])


def test_model_card_front_matter_and_secrets():
    args = {"model": "Qwen/Qwen2.5-VL-3B-Instruct", "train_type": "lora", "hub_token": "s1", "hf_token": "s2",
            "api_key": "s3", "max_new_tokens": 7, "image_max_token_num": 1024, "lora_rank": 8}
    text = model_card(repo_id="o/n", kind="adapter", base_model=args["model"], hub_base=True, args=args,
                      vlft_version="9.9")
    card = ModelCard(text)  # huggingface_hub's own parser of the front matter
    assert card.data.base_model == "Qwen/Qwen2.5-VL-3B-Instruct"
    assert card.data.library_name == "peft" and card.data.pipeline_tag == "image-text-to-text"
    assert set(card.data.tags) == {"vlft", "image-text-to-text", "lora"}
    assert not any(secret in text for secret in ("s1", "s2", "s3", "hub_token", "api_key"))
    assert all(f'"{key}"' in text for key in ("max_new_tokens", "image_max_token_num", "lora_rank"))
    assert "vlft 9.9" in text


def test_staging_replaces_peft_placeholder_readme_but_keeps_the_users(tmp_path):
    folder, staging = tmp_path / "ckpt", tmp_path / "staging"
    folder.mkdir()
    staging.mkdir()
    # What PEFT's save_pretrained writes: huggingface_hub's template card.
    ModelCard.from_template(ModelCardData(library_name="peft")).save(folder / "README.md")
    (folder / "adapter_config.json").write_text("{}")
    assert stage(folder, staging, {"README.md": b"vlft card"}) == []
    assert (staging / "README.md").read_bytes() == b"vlft card"
    assert (staging / "adapter_config.json").resolve() == (folder / "adapter_config.json").resolve()

    (folder / "README.md").write_text("# My model\n")
    other = tmp_path / "staging2"
    other.mkdir()
    notes = stage(folder, other, {"README.md": b"vlft card"})
    assert (other / "README.md").read_text() == "# My model\n"
    assert notes == [f"{folder / 'README.md'} exists: pushed as is (no model card generated)"]
