"""Model directories: resolving `--model`, tokenizers and the built-in tiny models."""
