"""Secrets out of command lines before they reach the output.

Command lines of traced processes are written to ``processes.cmdline`` (and a
launched command to ``session``), and traces get shared. By default values
that look like credentials are replaced by ``***``:

- options named like secrets: ``--password=x``, ``--token x``, ``-p x`` is not
  touched (too common), ``--api-key``, ``--secret``, ``--auth``, ...;
- ``NAME=value`` assignments with such names (``DB_PASSWORD=x``, ``token=x``);
- user:password in URLs (``postgres://app:***@db/x``);
- long high-entropy words (random tokens, keys): 24+ characters from the
  base64/hex alphabet, mixing letters and digits, at >= 3.5 bits per character.

``--redact PATTERN`` adds regular expressions whose matches are replaced;
``--no-redact`` turns all of it off.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

from .errors import ScopeError

MASK = "***"
_SECRET_NAME = (r"(?:[A-Za-z0-9_]*[_-])?(?:password|passwd|pwd|pass|secret|token|"
                r"api[_-]?key|apikey|access[_-]?key|private[_-]?key|auth|credentials?|"
                r"session[_-]?id|cookie)")
_OPTION_EQ = re.compile(rf"^(--?{_SECRET_NAME})=(.+)$", re.IGNORECASE)
_OPTION = re.compile(rf"^--?{_SECRET_NAME}$", re.IGNORECASE)
_ASSIGN = re.compile(rf"(?<![A-Za-z0-9_])({_SECRET_NAME})=([^\s&;]+)", re.IGNORECASE)
_URL_PASS = re.compile(r"([a-z][a-z0-9+.-]*://[^/\s:@]*:)([^@/\s]+)(@)", re.IGNORECASE)
_TOKEN = re.compile(r"[A-Za-z0-9+_=-]{24,}")  # no '/': paths are not secrets


def _entropy(s: str) -> float:
    n = len(s)
    return -sum(c / n * math.log2(c / n) for c in Counter(s).values())


def _looks_random(word: str) -> bool:
    return (any(c.isdigit() for c in word) and any(c.isalpha() for c in word)
            and _entropy(word) >= 3.5)


class Redactor:
    """Applies the default rules (unless ``defaults`` is False) and extra patterns."""

    def __init__(self, patterns: Sequence[str] = (), defaults: bool = True) -> None:
        self.defaults = defaults
        self.extra = []
        for p in patterns:
            try:
                self.extra.append(re.compile(p))
            except re.error as e:
                raise ScopeError(f"--redact: bad regular expression {p!r}: {e}") from None

    @property
    def active(self) -> bool:
        return self.defaults or bool(self.extra)

    def argv(self, argv: Sequence[str]) -> list[str]:
        """The arguments with secrets masked; the list keeps its length."""
        out: list[str] = []
        hide_next = False
        for arg in argv:
            if hide_next:
                out.append(MASK)
                hide_next = False
                continue
            if self.defaults:
                m = _OPTION_EQ.match(arg)
                if m:
                    out.append(f"{m.group(1)}={MASK}")
                    continue
                if _OPTION.match(arg):
                    out.append(arg)
                    hide_next = True
                    continue
                arg = self.text(arg, extra=False)
            out.append(self._extra(arg))
        return out

    def text(self, s: str, extra: bool = True) -> str:
        if self.defaults:
            s = _URL_PASS.sub(lambda m: m.group(1) + MASK + m.group(3), s)
            s = _ASSIGN.sub(lambda m: f"{m.group(1)}={MASK}", s)
            s = _TOKEN.sub(lambda m: MASK if _looks_random(m.group(0)) else m.group(0), s)
        return self._extra(s) if extra else s

    def _extra(self, s: str) -> str:
        for p in self.extra:
            s = p.sub(MASK, s)
        return s
