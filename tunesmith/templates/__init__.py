"""The one renderer for train, infer and serve. See chat.py."""

from tunesmith.templates.chat import IGNORE, TEMPLATE_FILE, Template

__all__ = ["IGNORE", "TEMPLATE_FILE", "Template"]
