"""Regenerate the small example dataset in examples/data/ (images, a video, train/val jsonl).

The task is one a tiny model can learn: name the colour of a solid image, or find a square.
Run: python examples/make_example_data.py
(data/tools.jsonl, the tool-calling example for Qwen3.5 / Qwen3.6, is written by hand.)
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw

HERE = Path(__file__).parent / "data"
COLOURS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 60, 220), "yellow": (230, 210, 40)}


def solid(name: str, size=(64, 48)) -> str:
    path = HERE / "images" / f"{name}.png"
    Image.new("RGB", size, COLOURS[name]).save(path)
    return f"images/{name}.png"


def square_image(index: int, box: tuple[int, int, int, int], size=(96, 64)) -> str:
    image = Image.new("RGB", size, (250, 250, 250))
    ImageDraw.Draw(image).rectangle(box, fill=(20, 20, 20))
    path = HERE / "images" / f"square{index}.png"
    image.save(path)
    return f"images/square{index}.png"


def moving_bar(path: Path, frames=16, fps=8, size=(64, 48)) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for i in range(frames):
            frame = np.full((size[1], size[0], 3), 240, np.uint8)
            frame[:, i * 3:i * 3 + 8] = (30, 30, 200)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def main() -> None:
    (HERE / "images").mkdir(parents=True, exist_ok=True)
    (HERE / "videos").mkdir(parents=True, exist_ok=True)
    for name in COLOURS:
        solid(name)
    moving_bar(HERE / "videos" / "bar.mp4")
    boxes = [(8, 8, 30, 30), (60, 30, 90, 60), (40, 10, 70, 40)]
    squares = [square_image(i, b) for i, b in enumerate(boxes)]
    rows = [
        {"messages": [{"role": "user", "content": "Where is the capital of Zhejiang?"},
                      {"role": "assistant", "content": "The capital of Zhejiang is Hangzhou."}]},
        {"messages": [{"role": "user", "content": "<image>What colour is this image?"},
                      {"role": "assistant", "content": "red"}], "images": ["images/red.png"]},
        {"messages": [{"role": "user", "content": "<image><image>What's the difference between these two images?"},
                      {"role": "assistant", "content": "The first one is green, the second one is blue."}],
         "images": ["images/green.png", "images/blue.png"]},
        {"messages": [{"role": "system", "content": "You are a helpful and harmless assistant"},
                      {"role": "user", "content": "<image>What's in the image, <video>what's in the video?"},
                      {"role": "assistant", "content": "A yellow image, and a blue bar moving right in the video."}],
         "images": ["images/yellow.png"], "videos": ["videos/bar.mp4"]},
        {"messages": [{"role": "user", "content": "<video>Describe the video."},
                      {"role": "assistant", "content": "A blue bar moves from left to right."}],
         "videos": ["videos/bar.mp4"]},
        {"messages": [{"role": "user", "content": "<image>Locate the <ref-object> in the image"},
                      {"role": "assistant", "content": "[\n\t{\"bbox_2d\": <bbox>, \"label\": \"<ref-object>\"}\n]"}],
         "images": [squares[0]], "objects": {"ref": ["square", "square"], "bbox": [list(boxes[0])]}},
        {"messages": [{"role": "user", "content": [{"type": "image", "image": squares[1]},
                                                   {"type": "text", "text": "Is there a square?"}]},
                      {"role": "assistant", "content": "Yes, at the bottom right."},
                      {"role": "user", "content": "What colour is it?"},
                      {"role": "assistant", "content": "Black."}]},
        {"conversations": [{"from": "human", "value": "<image>What colour is this image?"},
                           {"from": "gpt", "value": "blue"}], "images": ["images/blue.png"]},
        {"instruction": "Translate to French", "input": "Good morning", "output": "Bonjour"},
        {"query": "And the capital of Jiangsu?", "response": "Nanjing.",
         "history": [["Where is the capital of Zhejiang?", "Hangzhou."]]},
    ]
    with open(HERE / "train.jsonl", "w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    rng = random.Random(0)
    with open(HERE / "val.jsonl", "w") as f:
        for name in rng.sample(list(COLOURS), 2):
            row = {"messages": [{"role": "user", "content": "<image>What colour is this image?"},
                                {"role": "assistant", "content": name}], "images": [f"images/{name}.png"]}
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
