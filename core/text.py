"""Text that is safe to store and show, whatever a device or a caller sent.

PostgreSQL's ``text`` refuses NUL, and UTF-8 cannot encode a lone surrogate (JSON's ``\\ud800``
decodes to one in Python). Topics, details and names taken from a message pass through
:func:`safe_text` before they reach the database or a page: such characters become visible
escapes (``\\x00``, ``\\ud800``), so a person still sees what was sent, and the text always
encodes.
"""

from __future__ import annotations

import re

# NUL, the other C0 controls but tab/newline/CR, DEL, and the surrogate range.
_UNSAFE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def safe_text(text: str, limit: int | None = None) -> str:
    """``text`` with NUL, control characters and lone surrogates escaped, cut to ``limit``
    characters (marked with an ellipsis) when given."""
    if _UNSAFE.search(text) is not None:
        text = _UNSAFE.sub(_escape, text)
    if limit is not None and len(text) > limit:
        text = text[: max(limit - 1, 0)] + "…"
    return text


def quoted(text: object, limit: int = 80) -> str:
    """``repr``-like quoting of a value for an error detail: safe and bounded."""
    return "'" + safe_text(str(text), limit) + "'"
