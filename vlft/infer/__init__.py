"""Inference: an engine over a (base + adapters) model, OpenAI-shaped requests and responses."""
