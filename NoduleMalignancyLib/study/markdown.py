"""Names and free text from a study's people and files, made inert for the Markdown reports.

Why: a reader or study name, a skip reason or a modality in a scores file is typed by someone;
written unchanged into ``summary.md`` or ``mrmc.md`` a ``|`` breaks the table it sits in and
raw HTML (``<img onerror=...>``) runs in a viewer that renders it (issue 28, finding 9).
"""

from __future__ import annotations

import html
import re

__all__ = ["markdown_text"]

# Markdown's inline syntax (emphasis, code, links, tables, headings, escapes, $math$).
_MARKDOWN = re.compile(r"([\\`*_\[\]|#~!$])")


def markdown_text(value) -> str:
    """``value`` as one line of literal text in Markdown: whitespace runs (newlines too) become
    one space, HTML is escaped (``&lt;``), Markdown's syntax characters get a backslash."""
    text = " ".join(str(value).split())
    return _MARKDOWN.sub(r"\\\1", html.escape(text, quote=False))
