"""SftTrainer's cheaper per-step host work keeps transformers' results: gradient clipping over the parameters
that train (listed once) and the FLOPs estimate with the parameter count taken once give the same weights,
gradient norms and total_flos as the stock Trainer, over steps where the clipping bites."""

from __future__ import annotations

import torch
from peft import LoraConfig, get_peft_model
from transformers import Trainer, TrainingArguments
from transformers.modeling_outputs import CausalLMOutput

from vlft.families import get_family
from vlft.train.trainer import SftTrainer


class TinyLM(torch.nn.Module):
    main_input_name = "input_ids"

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(32, 16)
        self.hidden = torch.nn.Linear(16, 16)
        self.head = torch.nn.Linear(16, 32)

    def num_parameters(self, exclude_embeddings: bool = False) -> int:  # as PreTrainedModel's
        return sum(p.numel() for name, p in self.named_parameters()
                   if not (exclude_embeddings and name.startswith("embed")))

    def forward(self, input_ids, labels):
        logits = self.head(torch.tanh(self.hidden(self.embed(input_ids))))
        return CausalLMOutput(loss=torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten()),
                              logits=logits)


def train(trainer_cls, tmp_path, **extra):
    torch.manual_seed(0)
    model = get_peft_model(TinyLM(), LoraConfig(r=2, target_modules=["hidden", "head"], init_lora_weights=False))
    rows = [{"input_ids": torch.randint(0, 32, (6,)), "labels": torch.randint(0, 32, (6,))} for _ in range(8)]
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=2,
                             learning_rate=0.05, max_grad_norm=0.01, logging_steps=1, report_to=[], use_cpu=True,
                             save_strategy="no", seed=0, data_seed=0, dataloader_num_workers=0)
    trainer = trainer_cls(model=model, args=args, train_dataset=rows, **extra)
    trainer.train()
    norms = [log["grad_norm"] for log in trainer.state.log_history if "grad_norm" in log]
    weights = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    return trainer, norms, weights


def test_clipping_and_flops_match_the_stock_trainer(tmp_path):
    ours, our_norms, our_weights = train(SftTrainer, tmp_path / "ours", family=get_family("qwen3_vl"),
                                         part_lrs={}, balanced_vision_calls=False)
    stock, stock_norms, stock_weights = train(Trainer, tmp_path / "stock")
    assert len(our_norms) == 4 and all(norm > 0.01 for norm in our_norms)  # every step clipped
    assert our_norms == stock_norms
    assert our_weights.keys() == stock_weights.keys()
    for name in our_weights:
        torch.testing.assert_close(our_weights[name], stock_weights[name], rtol=0, atol=0)
    assert ours.state.total_flos == stock.state.total_flos > 0
    # The override is what ran (a renamed hook in transformers would leave these unset).
    assert ours._trained_parameters is not None and len(ours._trained_parameters) == 4  # 2 LoRA layers x (A, B)
    assert ours._flops_parameters is not None
