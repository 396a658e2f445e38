"""Declarative chat templates, one JSON file per model family (package data of vlft)."""
