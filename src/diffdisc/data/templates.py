"""Prompt templates, by their first home: they live in `diffdisc.templates` (below scoring, whose label trees
prompt with them)."""

from ..templates import DEFAULT, TEMPLATES, article, fill, resolve_templates

__all__ = ["DEFAULT", "TEMPLATES", "article", "fill", "resolve_templates"]
