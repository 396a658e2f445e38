"""The fastest correct training path, on by default: what `vlft sft` runs when the user leaves
`--torch_compile`, `--torch_compile_mode` and `--chunked_loss` unset.

On CUDA each part that applies is switched on: the decoder layers compiled whole (compile.py), replayed as CUDA
graphs over rows padded to --max_length (`--torch_compile_mode reduce-overhead`), and the loss computed in chunks
(chunked_loss.py). A part that does not apply stays off, and `FastPath.line` says which and why in one line:
CPU, DeepSpeed (ZeRO-3 breaks compiled graphs and partitions the output head; CUDA graphs beside DeepSpeed's
gradient hooks are untested), an attention other than the varlen kernel, unpacked rows (CUDA graphs replay one
row shape; gradient accumulation keeps them: graph_gradients.py), sequence parallelism (its
all-to-alls are not tried inside CUDA graphs; the layers still compile whole), an MoE aux loss (not in the chunked
loss), MoE layers where CUDA graphs are off (compiled without them they measured slower than eager), and, once
the model is loaded, layers that do not compile whole (linear attention, torch's own dropout: compile.py says why;
`vlft sft` swaps LoRA's dropout for counter_dropout.py's before this check). A flag the user gives always wins:
`--torch_compile false` and `--chunked_loss false` opt out, `--torch_compile true` compiles part by part where
layers do not compile whole, and a combination that cannot run is an error in check_run_arguments, as before.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from torch import nn

from vlft.arguments import SftArguments


@dataclass(frozen=True)
class FastPath:
    """What a run compiles, replays and chunks; `off` maps each part left off by default to the reason."""

    torch_compile: bool
    compile_mode: str | None  # torch.compile's mode for the layers compiled whole (None: its default)
    chunked_loss: bool
    off: dict[str, str] = field(default_factory=dict)
    automatic: bool = False  # any part chosen here rather than by a flag
    compile_chosen: bool = False  # torch.compile chosen here (not by --torch_compile)
    chunked_chosen: bool = False  # the chunked loss chosen here (not by --chunked_loss)

    @property
    def cuda_graphs(self) -> bool:
        return self.torch_compile and self.compile_mode == "reduce-overhead"

    def line(self) -> str | None:
        """The one line a run logs about its default fast path (None when the user set every part)."""
        if not self.automatic:
            return None
        on = [name for name, used in (("torch.compile", self.torch_compile), ("CUDA graphs", self.cuda_graphs),
                                      ("chunked loss", self.chunked_loss)) if used]
        off = [f"{name} ({why})" for name, why in self.off.items()]
        return ("fast path: " + (", ".join(on) + " on" if on else "nothing on")
                + ("; off: " + "; ".join(off) if off else "")
                + " (--torch_compile / --torch_compile_mode / --chunked_loss set it by hand)")

    def for_model(self, whole_layers: int, layers: int, why_not_whole: str | None,
                  router_aux_loss: bool = False, moe: bool = False) -> FastPath:
        """After the model loads: compiling by default only where every decoder layer compiles whole (a layer
        compiled part by part keeps its checkpoint and residuals eager, a small gain for the compile time) and,
        for a model with MoE layers, only as CUDA graphs (compiled without them, the 30B-A3B-shaped LoRA measured
        1,018 tokens/s against 2,945 eager on an H100, BENCHMARKS.md); the chunked loss by default only where the
        model adds no MoE aux loss (its config may turn it on)."""
        fast = self
        if self.chunked_chosen and self.chunked_loss and router_aux_loss:
            fast = replace(fast, chunked_loss=False, off={
                **fast.off, "chunked loss": "the model's config adds the MoE aux loss (output_router_logits)"})
        if not (self.compile_chosen and self.torch_compile):
            return fast
        if whole_layers != layers:
            reason = f"{layers - whole_layers} of {layers} decoder layers do not compile whole: {why_not_whole}"
        elif moe and not fast.cuda_graphs:
            reason = ("MoE layers compiled without CUDA graphs measured slower than eager (CUDA graphs off: "
                      f"{fast.off.get('CUDA graphs', 'not chosen')})")
        else:
            return fast
        off = {name: why for name, why in fast.off.items() if name != "CUDA graphs"}
        return replace(fast, torch_compile=False, compile_mode=None, off={**off, "torch.compile": reason})


def choose_fast_path(args: SftArguments, cuda: bool, zero_stage: int | None, varlen_attention: bool,
                     sharded: bool = False) -> FastPath:
    """The parts of the fast path for these arguments on this machine (before the model loads). `zero_stage`:
    DeepSpeed's ZeRO stage, None without DeepSpeed; `varlen_attention`: the attention is vlft's varlen kernel;
    `sharded`: FSDP shards the parameters (compiled layers and the chunked loss are not tried there)."""
    off: dict[str, str] = {}
    chose_compile = args.torch_compile is None
    if not chose_compile:
        torch_compile, mode = args.torch_compile, args.torch_compile_mode
    elif not cuda:
        torch_compile, mode = False, None
        off["torch.compile"] = "CPU"
    elif zero_stage == 3:
        torch_compile, mode = False, None
        off["torch.compile"] = "DeepSpeed ZeRO-3 gathers parameters inside the graphs"
    elif sharded:
        torch_compile, mode = False, None
        off["torch.compile"] = "--fsdp (not tried with compiled layers)"
    elif args.quant_bits:
        torch_compile, mode = False, None
        off["torch.compile"] = f"--quant_bits {args.quant_bits} (not tried with compiled 4-bit layers)"
    else:
        torch_compile, mode = True, args.torch_compile_mode
    if chose_compile and torch_compile and mode is None:
        why_not = cuda_graph_obstacle(args, zero_stage, varlen_attention)
        if why_not is None:
            mode = "reduce-overhead"
        else:
            off["CUDA graphs"] = why_not
    chose_chunked = args.chunked_loss is None
    if not chose_chunked:
        chunked = bool(args.chunked_loss)
    elif not cuda:
        chunked = False
        off["chunked loss"] = "CPU"
    elif zero_stage == 3 or sharded:
        chunked = False
        off["chunked loss"] = f"{'--fsdp shards' if sharded else 'DeepSpeed ZeRO-3 partitions'} the output head"
    elif args.router_aux_loss_coef:
        chunked = False
        off["chunked loss"] = "--router_aux_loss_coef adds the MoE aux loss, which the chunked loss leaves out"
    else:
        chunked = True
    return FastPath(torch_compile=torch_compile, compile_mode=mode, chunked_loss=chunked, off=off,
                    automatic=chose_compile or chose_chunked, compile_chosen=chose_compile,
                    chunked_chosen=chose_chunked)


def cuda_graph_obstacle(args: SftArguments, zero_stage: int | None, varlen_attention: bool) -> str | None:
    """Why rows cannot replay as CUDA graphs with these arguments (None: they can); the same conditions that
    make an explicit `--torch_compile_mode reduce-overhead` an error."""
    if zero_stage is not None:
        return "--deepspeed"
    if args.sequence_parallel_size > 1:
        return (f"--sequence_parallel_size {args.sequence_parallel_size}: the all-to-alls inside attention are not "
                "tried in CUDA graphs")
    if not varlen_attention:
        return f"--attn_impl {args.attn_impl}: only the varlen attention takes row boundaries without host reads"
    if not args.packing:
        return "--packing false: graphs replay rows of one length"
    if args.per_device_eval_batch_size > args.per_device_train_batch_size:
        return "--per_device_eval_batch_size above --per_device_train_batch_size"
    return None


def layers_not_whole(layers: nn.ModuleList, kinds: list) -> tuple[int, str | None]:
    """(decoder layers that compile whole, why the others do not) per compile.whole_layer_compiles."""
    from vlft.train.compile import whole_layer_compiles

    reasons = []
    whole = 0
    for layer, kind in zip(layers, kinds):
        if whole_layer_compiles(layer, kind):
            whole += 1
            continue
        dropout = any(isinstance(m, nn.Dropout) and m.p > 0 for m in layer.modules())
        reason = ("linear attention" if kind.attention == "linear"
                  else "LoRA dropout (--lora_dropout 0 compiles them whole)" if dropout else "")
        if reason and reason not in reasons:
            reasons.append(reason)
    return whole, ", ".join(reasons) or None
