"""Two things that keep the seed page's command (LoRA dropout 0.05, --gradient_accumulation_steps 2) off the fast
path, tried on a small stack of checkpointed LoRA layers, each compiled whole as vlft compiles decoder layers:
1. dropout inside a compiled gradient checkpoint (torch's nn.Dropout; with RNG functionalization; vlft's CounterDropout
   without RNG ops), forward + backward; 2. gradient accumulation over 2 micro-batches with the layers
   replayed as CUDA graphs, gradients against eager (with and without a clone hook on each trainable parameter).
GPU machine; prints one table:

    python3 bench/compile_obstacles.py
"""

from __future__ import annotations

import traceback

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from vlft.train.counter_dropout import CounterDropout, replace_lora_dropouts

WIDTH, RANK, TOKENS, LAYERS = 256, 8, 512, 4


class Layer(nn.Module):
    def __init__(self, dropout: nn.Module):
        super().__init__()
        self.base = nn.Linear(WIDTH, WIDTH, bias=False).requires_grad_(False)
        self.a = nn.Linear(WIDTH, RANK, bias=False)
        self.b = nn.Linear(RANK, WIDTH, bias=False)
        nn.init.normal_(self.b.weight, std=0.02)
        self.drop = dropout

    def inner(self, x):
        return x + torch.nn.functional.silu(self.base(x) + self.b(self.a(self.drop(x))))

    def forward(self, x):
        return checkpoint(self.inner, x, use_reentrant=False)


def stack(dropout_kind: str, p: float):
    torch.manual_seed(0)
    counter = torch.zeros((), dtype=torch.int64, device="cuda")
    layers = []
    for index in range(LAYERS):
        drop = CounterDropout(p, counter, index) if dropout_kind == "hash" else nn.Dropout(p)
        layers.append(Layer(drop))
    return nn.Sequential(*layers).cuda(), counter


def dropout_case(kind: str, functionalize: bool = False) -> str:
    import torch._functorch.config as functorch_config

    old = functorch_config.functionalize_rng_ops
    functorch_config.functionalize_rng_ops = functionalize
    try:
        torch._dynamo.reset()
        model, counter = stack(kind, 0.05)
        for layer in model:
            layer.compile()
        x = torch.randn(TOKENS, WIDTH, device="cuda", requires_grad=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            model(x).float().pow(2).mean().backward()
        grad = model[0].a.weight.grad.float().norm().item()
        counter += 1
        with torch.autocast("cuda", dtype=torch.bfloat16):
            model(x).float().pow(2).mean().backward()
        return f"ok (grad norm {grad:.4g})"
    except Exception as error:  # noqa: BLE001 - the table reports it
        traceback.print_exc()
        return f"FAILS: {type(error).__name__}: {str(error).splitlines()[0][:120]}"
    finally:
        functorch_config.functionalize_rng_ops = old


def accumulated_grads(graphs: bool, clone_hook: bool, compiled: bool = True) -> list[torch.Tensor]:
    torch._dynamo.reset()
    model, _ = stack("none", 0.0)
    if compiled:
        for layer in model:
            layer.compile(mode="reduce-overhead" if graphs else None)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if clone_hook:
        for param in trainable:
            param.register_hook(lambda grad: grad.clone())
    generator = torch.Generator(device="cuda").manual_seed(1)
    for step in range(3):  # steps of 2 micro-batches; gradients of the last step returned
        for param in trainable:
            param.grad = None
        for micro in range(2):
            x = torch.randn(TOKENS, WIDTH, device="cuda", generator=generator)
            if graphs:
                torch.compiler.cudagraph_mark_step_begin()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = model(x).float().pow(2).mean() / 2
            loss.backward()
    return [p.grad.detach().float().clone() for p in trainable]


def accumulation_case(graphs: bool, clone_hook: bool) -> str:
    try:
        eager = accumulated_grads(False, False, compiled=False)
        got = accumulated_grads(graphs, clone_hook)
        worst = max(((a - b).norm() / b.norm()).item() for a, b in zip(got, eager))
        return f"{'ok' if worst < 2e-2 else 'WRONG'} (worst relative grad error {worst:.2e})"
    except Exception as error:  # noqa: BLE001
        traceback.print_exc()
        return f"FAILS: {type(error).__name__}: {str(error).splitlines()[0][:120]}"


def tiny_model_case(kind: str) -> str:
    """The tiny Qwen3-VL with LoRA dropout 0.05 and gradient checkpointing, every decoder layer compiled whole
    (as vlft compiles them), one text row forward + backward; `kind` "hash" swaps PEFT's dropouts for CounterDropout."""
    from pathlib import Path
    from types import SimpleNamespace

    from vlft.families import family_of
    from vlft.model.tiny import ensure_tiny_model
    from vlft.train.compile import decoder_layers
    from vlft.train.model import enable_gradient_checkpointing, load_model
    from vlft.train.tuners import prepare_trainable

    try:
        torch._dynamo.reset()
        torch.manual_seed(0)
        model_dir = ensure_tiny_model("qwen3_vl", Path("/tmp/vlft-tiny"))
        model = load_model(model_dir, torch.bfloat16, "sdpa")
        enable_gradient_checkpointing(model, llm=True, vit=False)
        args = SimpleNamespace(train_type="lora", freeze_vit=True, freeze_aligner=True, freeze_llm=False,
                               target_modules=["all-linear"], lora_rank=4, lora_alpha=8, lora_dropout=0.05,
                               use_dora=False, use_rslora=False, modules_to_save=[], freeze_router=True)
        model = prepare_trainable(model, family_of(model), args).cuda().train()
        if kind == "hash":
            assert replace_lora_dropouts(model) is not None
        for layer in decoder_layers(model):
            layer.compile()
        ids = torch.randint(0, 1000, (1, 256), device="cuda")
        for _ in range(2):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
        return f"ok (loss {loss.item():.4f})"
    except Exception as error:  # noqa: BLE001
        traceback.print_exc()
        return f"FAILS: {type(error).__name__}: {str(error).splitlines()[0][:120]}"


def main() -> None:
    print("torch", torch.__version__, torch.cuda.get_device_name())
    cases = [
        ("nn.Dropout(0.05) in compiled checkpoint", lambda: dropout_case("torch")),
        ("nn.Dropout(0.05), functionalize_rng_ops", lambda: dropout_case("torch", functionalize=True)),
        ("CounterDropout(0.05) in compiled checkpoint", lambda: dropout_case("hash")),
        ("tiny Qwen3-VL, PEFT dropout 0.05, layers compiled whole", lambda: tiny_model_case("torch")),
        ("tiny Qwen3-VL, CounterDropout 0.05, layers compiled whole", lambda: tiny_model_case("hash")),
        ("GA 2, compiled, no graphs", lambda: accumulation_case(False, False)),
        ("GA 2, CUDA graphs, no hook", lambda: accumulation_case(True, False)),
        ("GA 2, CUDA graphs, clone hook", lambda: accumulation_case(True, True)),
    ]
    rows = []
    for name, case in cases:  # each row printed as it is known: a call cut short still reports the rows it ran
        rows.append((name, case()))
        print(f"| {name} | {rows[-1][1]} |", flush=True)
    print("\n| case | result |\n| --- | --- |")
    for name, result in rows:
        print(f"| {name} | {result} |")


if __name__ == "__main__":
    main()
