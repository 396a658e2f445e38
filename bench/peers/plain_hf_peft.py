"""Plain transformers + PEFT as a benchmark peer of vlft: the HF processor encodes each sample in the
data loader, batches are padded (no packing), attention is sdpa. Same model, data and LoRA settings as
bench/sft_qwen3_vl_4b.py (LoRA r8/32 on the LLM's linear layers, ViT and aligner frozen, gradient
checkpointing, bf16 on GPU). Measured by measure.py like the other peers.

    python bench/peers/plain_hf_peft.py --workdir /tmp/vlft-bench --max_length 4096 --max_steps 65
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # measure.py, also when imported from bench/sft_qwen3_vl_4b.py

from measure import Records, install, run_logged, summarize

LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
IGNORE_INDEX = -100


def chat_messages(row: dict) -> list[dict]:
    """A seed-format row's messages in the processor's structured form (`<image>` -> an image part)."""
    messages = []
    for message in row["messages"]:
        content = []
        for i, text in enumerate(message["content"].split("<image>")):
            if i:
                content.append({"type": "image"})
            if text:
                content.append({"type": "text", "text": text})
        messages.append({"role": message["role"], "content": content})
    return messages


class SeedJsonl:
    """Map-style dataset: each row encoded by the HF processor when the loader asks for it."""

    def __init__(self, path: Path, processor, max_length: int):
        self.rows = [json.loads(line) for line in path.read_text().splitlines()]
        self.base = path.parent
        self.processor, self.max_length = processor, max_length

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        from PIL import Image

        row = self.rows[index]
        messages = chat_messages(row)
        prompt = self.processor.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=False)
        full = self.processor.apply_chat_template(messages, tokenize=False)
        assert full.startswith(prompt), "the chat template renders the prompt differently with the answer"
        images = [Image.open(self.base / p).convert("RGB") for p in row.get("images", [])]
        encoded = self.processor(text=[full], images=images or None, return_tensors="pt")
        ids = encoded["input_ids"][0]
        answer = self.processor.tokenizer(full[len(prompt):], add_special_tokens=False)["input_ids"]
        labels = ids.clone()
        labels[:len(ids) - len(answer)] = IGNORE_INDEX  # loss on the answer (and its end-of-turn) only
        sample = {k: v[0] for k, v in encoded.items() if k not in ("pixel_values", "image_grid_thw")}
        sample.update(labels=labels, pixel_values=encoded.get("pixel_values"),
                      image_grid_thw=encoded.get("image_grid_thw"))
        for key in ("input_ids", "attention_mask", "labels", "mm_token_type_ids"):
            if key in sample:
                sample[key] = sample[key][:self.max_length]  # the image comes first: only text is cut
        return sample


def pad_batch(samples: list[dict], pad_token_id: int) -> dict:
    """Right-padded token tensors; pixel values and grids concatenated over the batch."""
    import torch
    from torch.nn.utils.rnn import pad_sequence

    pads = {"input_ids": pad_token_id, "attention_mask": 0, "labels": IGNORE_INDEX, "mm_token_type_ids": 0}
    batch = {k: pad_sequence([s[k] for s in samples], batch_first=True, padding_value=v)
             for k, v in pads.items() if k in samples[0]}
    for key in ("pixel_values", "image_grid_thw"):
        parts = [s[key] for s in samples if s.get(key) is not None]
        if parts:
            batch[key] = torch.cat(parts)
    return batch


def train(workdir: Path, max_length: int, steps: int, batch_size: int, num_workers: int, records_path: Path,
          lora_dropout: float = 0.05, logging_steps: int = 1) -> None:
    """The training run itself (in the subprocess), its records written to records_path."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForImageTextToText,
        AutoProcessor,
        Trainer,
        TrainingArguments,
    )

    records = Records()
    install(records)
    cuda = torch.cuda.is_available()
    model_dir = workdir / "qwen3-vl-4b-random"
    processor = AutoProcessor.from_pretrained(model_dir)
    model = AutoModelForImageTextToText.from_pretrained(
        model_dir, dtype=torch.bfloat16 if cuda else torch.float32, attn_implementation="sdpa")
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=32, lora_dropout=lora_dropout,
                                             target_modules=LORA_TARGETS, task_type="CAUSAL_LM"))
    args = TrainingArguments(
        output_dir=str(workdir / "runs_plain"), per_device_train_batch_size=batch_size, gradient_accumulation_steps=1,
        max_steps=steps, learning_rate=1e-4, weight_decay=0.1, lr_scheduler_type="cosine", warmup_steps=0,
        logging_steps=logging_steps, save_strategy="no", report_to=[], bf16=cuda, use_cpu=not cuda, seed=42,
        gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False},
        dataloader_num_workers=num_workers, remove_unused_columns=False)
    dataset = SeedJsonl(workdir / "data" / "train.jsonl", processor, max_length)
    trainer = Trainer(model=model, args=args, train_dataset=dataset,
                      data_collator=functools.partial(pad_batch, pad_token_id=processor.tokenizer.pad_token_id))
    try:
        trainer.train()
    finally:
        losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
        records.dump(str(records_path), losses=losses)


def run_plain(workdir, max_length: int, steps: int, warmup_steps: int = 5, batch_size: int = 4,
              num_workers: int = 4, lora_dropout: float = 0.05, logging_steps: int = 1) -> dict:
    """Train in a subprocess (this interpreter and environment); its measured metrics."""
    from transformers import AutoConfig

    workdir = Path(workdir)
    output = workdir / "runs_plain"
    output.mkdir(parents=True, exist_ok=True)
    records, log = output / "records.json", output / "plain.log"
    command = [sys.executable, str(Path(__file__).resolve()), "--workdir", str(workdir), "--max_length",
               str(max_length), "--max_steps", str(steps), "--batch_size", str(batch_size), "--num_workers",
               str(num_workers), "--lora_dropout", str(lora_dropout), "--logging_steps", str(logging_steps),
               "--train_to", str(records)]
    started = time.time()
    run_logged(command, log, "plain transformers + PEFT run")
    recorded = json.loads(records.read_text())
    result = summarize(recorded, warmup_steps, AutoConfig.from_pretrained(workdir / "qwen3-vl-4b-random"))
    result.update(name="transformers + PEFT", wall_s=time.time() - started, loss_first=recorded["losses"][0],
                  loss_last=recorded["losses"][-1],
                  settings=f"padded batches of {batch_size}, sdpa, LoRA dropout {lora_dropout}")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/vlft-bench"))
    parser.add_argument("--max_length", type=int, default=4096)
    parser.add_argument("--max_steps", type=int, default=65)
    parser.add_argument("--warmup_steps", type=int, default=5)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--num_workers", type=int, default=4)
    parser.add_argument("--lora_dropout", type=float, default=0.05)
    parser.add_argument("--logging_steps", type=int, default=1)
    parser.add_argument("--train_to", type=Path, default=None, help=argparse.SUPPRESS)  # the subprocess's role
    args = parser.parse_args()
    if args.train_to:
        train(args.workdir, args.max_length, args.max_steps, args.batch_size, args.num_workers, args.train_to,
              args.lora_dropout, args.logging_steps)
        return 0
    result = run_plain(args.workdir, args.max_length, args.max_steps, args.warmup_steps, args.batch_size,
                       args.num_workers, args.lora_dropout, args.logging_steps)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent.parent))  # vlft's flops for MFU when run from a checkout
    sys.exit(main())
