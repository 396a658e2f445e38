"""`vlft <command>`: dispatch to one small module per subcommand."""

from __future__ import annotations

import importlib
import sys
import warnings

from vlft.errors import VlftError

# command -> (module under vlft.cli, one-line description)
COMMANDS = {
    "sft": ("vlft.cli.sft", "fine-tune with LoRA or in full (ms-swift's `swift sft` arguments)"),
    "infer": ("vlft.cli.infer", "answer a dataset or chat, with or without LoRA adapters (`swift infer`)"),
    "deploy": ("vlft.cli.deploy", "serve the model with an OpenAI-compatible API (`swift deploy`)"),
    "export": ("vlft.cli.export", "merge LoRA adapters into a full model, push to a hub (`swift export`)"),
    "data": ("vlft.cli.data", "check or encode a dataset with a model's template (data check | data encode)"),
    "megatron": ("vlft.cli.megatron", "train on Megatron-Core: megatron sft (Megatron-SWIFT's `megatron sft`)"),
    "model": ("vlft.cli.model", "built-in models (model tiny: write a tiny random model dir)"),
    "web-ui": ("vlft.cli.web_ui", "a web page to chat with a model and to start and watch training (`swift web-ui`)"),
}

# Library warnings that fill the console of every run but ask nothing of the user: (category, message regex,
# module regex of the warning's origin, why it is harmless). Each is matched exactly, so a new warning still shows.
KNOWN_WARNINGS = (
    # transformers 5.23 renames gradient checkpointing to activation checkpointing; the old names still work.
    (FutureWarning, r"`gradient_checkpointing` is deprecated", r"transformers\.training_args",
     "vlft passes gradient_checkpointing=False to TrainingArguments (it enables checkpointing per part)"),
    (FutureWarning, r"`gradient_checkpointing_enable` is deprecated", r"transformers\.modeling_utils",
     "PEFT calls the old name (prepare_model_for_kbit_training, and when it wraps a checkpointed model)"),
    (FutureWarning, r"`is_gradient_checkpointing` is deprecated", r"transformers\.modeling_utils",
     "PEFT reads the old name when it wraps a model (training, infer --adapters, export --merge_lora)"),
)


def quiet_known_warnings() -> None:
    """Hide KNOWN_WARNINGS (only those) for the rest of the process."""
    for category, message, module, _ in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module + r"\Z")


USAGE = "usage: vlft <command> [<args>]\n\ncommands:\n" + "\n".join(
    f"  {name:<8} {description}" for name, (_, description) in COMMANDS.items()
) + "\n\n`vlft <command> --help` describes a command's arguments."


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `vlft` console script."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    if argv[0] in ("-V", "--version"):
        import vlft

        print(f"vlft {vlft.__version__}")
        return 0
    command = argv[0]
    if command not in COMMANDS:
        import difflib

        near = difflib.get_close_matches(command, COMMANDS, n=1)
        print(f"vlft: unknown command {command!r}" + (f"; did you mean {near[0]!r}?" if near else "")
              + f"\n\n{USAGE}", file=sys.stderr)
        return 2
    quiet_known_warnings()
    module = importlib.import_module(COMMANDS[command][0])
    try:
        return module.run(argv[1:])
    except VlftError as e:
        print(f"vlft {command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
