"""`vlft deploy`: the real `openai` client against the server on 127.0.0.1, answers equal to the engine's."""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.conftest import REPO

openai = pytest.importorskip("openai")
RED = REPO / "examples" / "data" / "images" / "red.png"


@pytest.fixture(scope="module")
def served(checkpoint):
    from vlft import InferEngine
    from vlft.infer.server import make_server

    engine = InferEngine(adapters=[str(checkpoint)])
    server = make_server(engine, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{server.server_address[1]}/v1", api_key="unused",
                           max_retries=0)
    yield engine, client
    server.shutdown()
    server.server_close()


def image_message(url: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": "What colour is this image?"}]}]


def test_chat_completion_equals_the_engine(served):
    from vlft import InferRequest, RequestConfig

    engine, client = served
    data_uri = "data:image/png;base64," + base64.b64encode(RED.read_bytes()).decode()
    assert [m.id for m in client.models.list()] == [engine.model_name]
    reply = client.chat.completions.create(model=engine.model_name, messages=image_message(data_uri),
                                           max_tokens=8, temperature=0)
    expected = engine.infer([InferRequest(messages=[{"role": "user", "content": "<image>What colour is this image?"}],
                                          images=[str(RED)])], RequestConfig(max_tokens=8))[0]
    assert reply.choices[0].message.content == expected.choices[0].message.content
    assert reply.usage.prompt_tokens == expected.usage.prompt_tokens
    stream = client.chat.completions.create(model=engine.model_name, messages=image_message(data_uri),
                                            max_tokens=8, temperature=0, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream) == expected.choices[0].message.content


def test_local_paths_are_refused_by_default(served):
    engine, client = served
    with pytest.raises(openai.BadRequestError, match="allow_local_media"):
        client.chat.completions.create(model=engine.model_name, messages=image_message(str(RED)), max_tokens=4)
    too_many = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,"
                                                                                       + base64.b64encode(
                                                                                           RED.read_bytes()).decode()}},
                                             {"type": "text", "text": "<image> and this one?"}]}]
    with pytest.raises(openai.BadRequestError, match="placeholders"):
        client.chat.completions.create(model=engine.model_name, messages=too_many, max_tokens=4)


def test_vlft_deploy_command(checkpoint):
    process = subprocess.Popen([str(Path(sys.executable).with_name("vlft")), "deploy", "--adapters", str(checkpoint),
                                "--port", "0", "--allow_local_media", "true"], stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True, env=os.environ.copy())
    try:
        line = ""
        while "serving" not in line:
            line = process.stdout.readline()
            assert line, "vlft deploy exited before serving"
        port = int(re.search(r":(\d+)/v1", line).group(1))
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        reply = client.chat.completions.create(model="x", messages=image_message(str(RED)), max_tokens=4)
        assert isinstance(reply.choices[0].message.content, str)
    finally:
        process.terminate()
        process.wait(timeout=30)
