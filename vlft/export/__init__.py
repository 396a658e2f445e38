"""`vlft export`: turn a training checkpoint into a model dir that loads on its own (LoRA merged into the base)."""
