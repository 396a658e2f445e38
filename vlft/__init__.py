"""vlft: fine-tuning toolkit for Qwen vision-language models."""

__version__ = "0.1.0"


def __getattr__(name: str):
    """`from vlft import InferEngine, InferRequest, RequestConfig` without importing torch up front; `PtEngine` is
    ms-swift's name for the same engine (`from swift.llm import PtEngine` -> `from vlft import PtEngine`)."""
    if name in ("InferEngine", "PtEngine"):
        from vlft.infer.engine import InferEngine

        return InferEngine
    if name in ("InferRequest", "RequestConfig"):
        from vlft.infer import protocol

        return getattr(protocol, name)
    raise AttributeError(f"module 'vlft' has no attribute {name!r}")
