"""One `vlft deploy` server per test session (tiny Qwen3-VL, two named random LoRA adapters, small limits), shared
by the server tests and the load test."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import write_video
from tests.infer.server_helpers import BLUE, KEY, RED, random_loras

MAX_MODEL_LEN, MAX_TOKENS_LIMIT = 512, 64


@dataclass
class Served:
    engine: object
    server: object
    url: str
    client: object
    adapters: dict[str, Path]
    temp_dir: Path


@pytest.fixture(scope="session")
def lora_adapters(tiny_model_dir, tmp_path_factory) -> dict[str, Path]:
    return random_loras(tiny_model_dir("qwen3_vl"), tmp_path_factory.mktemp("adapters"), {"a": 1, "b": 2})


@pytest.fixture(scope="session")
def media_root(tmp_path_factory) -> Path:
    """media/red.png, media/v.mp4 and media/link-out.png -> ../outside/blue.png (a symlink out of the folder)."""
    base = tmp_path_factory.mktemp("served")
    (base / "media").mkdir()
    (base / "outside").mkdir()
    (base / "media" / "red.png").write_bytes(RED.read_bytes())
    (base / "outside" / "blue.png").write_bytes(BLUE.read_bytes())
    (base / "media" / "link-out.png").symlink_to(base / "outside" / "blue.png")
    write_video(base / "media" / "v.mp4", frames=8)
    return base / "media"


@pytest.fixture(scope="session")
def served(tiny_model_dir, lora_adapters, media_root, tmp_path_factory):
    """A server on 127.0.0.1 with the API key, the media folder, small limits and the adapters a and b."""
    openai = pytest.importorskip("openai")
    from vlft import InferEngine
    from vlft.infer.chat_request import RequestLimits
    from vlft.arguments import DeployArguments
    from vlft.infer.server import ServerLimits, make_server
    from vlft.infer.server_media import MediaLimits

    args = DeployArguments(model=str(tiny_model_dir("qwen3_vl")), max_batch_size=8, image_max_token_num=16,
                          image_min_token_num=4, max_model_len=MAX_MODEL_LEN, max_new_tokens=16,
                          adapters=[f"{name}={path}" for name, path in lora_adapters.items()])
    engine = InferEngine(args=args)
    temp_dir = tmp_path_factory.mktemp("request-files")
    limits = ServerLimits(max_body_bytes=256 * 1024, client_timeout=1.5, request=RequestLimits(
        max_media=3, max_tokens_limit=MAX_TOKENS_LIMIT, media=MediaLimits(
            root=media_root, max_bytes=256 * 1024, max_pixels=1_000_000, max_request_pixels=1_500_000,
            temp_dir=temp_dir)))
    server = make_server(engine, "127.0.0.1", 0, limits, api_key=KEY)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    yield Served(engine, server, url, openai.OpenAI(base_url=url, api_key=KEY, max_retries=0), lora_adapters,
                 temp_dir)
    server.shutdown()
    thread.join(timeout=30)
    server.server_close()
