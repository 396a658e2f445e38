"""vlft: fine-tuning toolkit for Qwen vision-language models."""

__version__ = "0.1.0"
