"""The data pipeline: loading, formats, media, grounding, template encoding."""
