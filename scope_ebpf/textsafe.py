"""Text from traced programs, made safe to print.

Function, file, thread and process names come from the program being traced,
which may be hostile: a name holding ESC sequences, C1 controls (0x80-0x9f,
e.g. CSI 0x9b), CR or BEL would clear the screen, set the window title, write
the clipboard (OSC 52) or forge output lines on the terminal that shows it.
Every such name printed by a command (terminal summaries, `query` table and
csv, status lines, warnings, errors, `probes`, daemon logs, folded exports)
goes through :func:`safe`; JSON goes through :func:`json_text`. HTML is
escaped by report.py and is not a terminal.
"""

from __future__ import annotations

import json
import re
from typing import Any

# C0 controls and DEL, C1 controls, and the invisible characters that reorder or
# break lines (bidi overrides and isolates, LINE/PARAGRAPH SEPARATOR).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e"
                     "\u2066-\u2069]")
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(m: re.Match[str]) -> str:
    c = m.group()
    n = ord(c)
    return _SHORT.get(c) or (f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}")


def safe(text: object) -> str:
    """``str(text)`` with every control character shown as an escape (``\\x1b``,
    ``\\x9b``, ``\\u202e``; newline, CR and tab as ``\\n``, ``\\r``, ``\\t``).

    Printable text, including non-ASCII letters and backslashes, is unchanged.
    """
    s = str(text)
    return _UNSAFE.sub(_escape, s) if _UNSAFE.search(s) else s


# json.dumps(ensure_ascii=False) escapes C0 itself but leaves DEL, C1 and the rest raw.
_JSON_RAW = re.compile("[\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def json_text(value: Any) -> str:
    """JSON with non-ASCII letters kept readable and every control character
    ``\\u``-escaped: the same value, nothing a terminal acts on."""
    return _JSON_RAW.sub(lambda m: f"\\u{ord(m.group()):04x}",
                         json.dumps(value, ensure_ascii=False))
