"""Training: DeepSpeed configs, launching, run dirs, callbacks, and the `vlft sft` recipe."""
