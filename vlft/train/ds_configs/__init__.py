"""Built-in DeepSpeed configs (JSON, HF Trainer "auto" values), read with importlib.resources."""
