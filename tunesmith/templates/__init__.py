"""The one renderer for train, infer and serve. See chat.py."""

from tunesmith.templates.chat import IGNORE, TEMPLATE_FILE, RewritesPastTurns, Template
from tunesmith.templates.reasoning import ReasoningSplit, split_reasoning

__all__ = ["IGNORE", "TEMPLATE_FILE", "ReasoningSplit", "RewritesPastTurns", "Template", "split_reasoning"]
