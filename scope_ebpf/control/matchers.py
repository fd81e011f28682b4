"""--include / --exclude patterns, decided once per function in Python.

The kernel cannot run globs or regexes, so each function's verdict is computed
here the first time its code object is seen and handed to the kernel as a
keep/drop flag. Patterns are validated up front so a typo fails the command
instead of silently tracing nothing.

Pattern syntax, matched against ``FILE:FUNCTION``
(e.g. ``/srv/app/myapp/views.py:handle_get``):

* a shell glob (``fnmatch.fnmatchcase``, case-sensitive) over the whole string:
  ``'*/myapp/*:*'``, ``'*:handle_*'``;
* a glob *without* ``:`` matches the function name only, so ``--include fib``
  and ``--exclude '_*'`` work without a file part;
* ``re:REGEX``: a Python regex, ``re.search``-ed over the whole ``FILE:FUNCTION``.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from scope_ebpf.errors import ScopeError


@dataclass(frozen=True)
class _Pattern:
    text: str
    regex: re.Pattern[str]
    whole: bool  # match FILE:FUNCTION (True) or just FUNCTION (False)
    glob: bool  # globs must match the whole subject; regexes are searched

    def matches(self, whole: str, function: str) -> bool:
        subject = whole if self.whole else function
        found = self.regex.match(subject) if self.glob else self.regex.search(subject)
        return found is not None


def _unclosed_bracket(glob: str) -> int | None:
    """Index of a ``[`` that has no closing ``]``, using fnmatch's own rules.

    fnmatch treats such a ``[`` as a literal, which is almost never what the user
    meant (``'*:get[0-9'``), so it is reported instead.
    """
    i, n = 0, len(glob)
    while i < n:
        if glob[i] == "[":
            j = i + 1
            if j < n and glob[j] == "!":
                j += 1
            if j < n and glob[j] == "]":  # "[]...]": a leading ] is a member
                j += 1
            while j < n and glob[j] != "]":
                j += 1
            if j >= n:
                return i
            i = j
        i += 1
    return None


@lru_cache(maxsize=1024)
def _compile(text: str, option: str) -> _Pattern:
    """Validate and compile one pattern; ``option`` names the flag in errors."""
    if not text.strip():
        examples = ("'worker*'" if option == "--thread-name"
                    else "'*/myapp/*:*', 'handle_*'")
        raise ScopeError(f"empty {option} pattern: use e.g. {examples} or 're:REGEX'")
    if text.startswith("re:"):
        source = text[3:]
        if not source:
            raise ScopeError(f"bad {option} pattern {text!r}: empty regex after 're:'")
        try:
            return _Pattern(text, re.compile(source), whole=True, glob=False)
        except re.error as e:
            raise ScopeError(f"bad {option} pattern {text!r}: {e}") from None
    at = _unclosed_bracket(text)
    if at is not None:
        raise ScopeError(
            f"bad {option} pattern {text!r}: '[' at position {at} has no closing ']'"
            " (write '[[]' for a literal '[')"
        )
    return _Pattern(text, re.compile(fnmatch.translate(text)), whole=":" in text, glob=True)


def check_patterns(patterns: Iterable[str], option: str) -> None:
    """Raise ScopeError for the first bad pattern: done before anything starts."""
    for p in patterns:
        _compile(p, option)


class Matcher:
    """Keep/drop verdicts for functions from include and exclude patterns.

    Excludes win over includes; with no includes, everything not excluded is kept.
    """

    def __init__(self, include: list[str], exclude: list[str]) -> None:
        self.include = list(include)
        self.exclude = list(exclude)
        self._include = [_compile(p, "--include") for p in self.include]
        self._exclude = [_compile(p, "--exclude") for p in self.exclude]

    @property
    def active(self) -> bool:
        """False when there are no patterns, so the kernel needs no verdicts at all."""
        return bool(self._include or self._exclude)

    def keep(self, file: str | None, function: str | None) -> bool:
        """Whether rows for ``function`` in ``file`` are kept (None counts as "")."""
        function = function or ""
        whole = f"{file or ''}:{function}"
        if any(p.matches(whole, function) for p in self._exclude):
            return False
        return not self._include or any(p.matches(whole, function) for p in self._include)

    @staticmethod
    def name_matches(name: str | None, patterns: Iterable[str]) -> bool:
        """Whether a plain name (a thread name for ``--thread-name``) matches any pattern.

        Same syntax, but every glob or regex is applied to the whole name; ':' has
        no special meaning here. Raises ScopeError for a bad pattern.
        """
        subject = name or ""
        return any(_compile(p, "--thread-name").matches(subject, subject) for p in patterns)

    def __repr__(self) -> str:
        return f"Matcher(include={self.include!r}, exclude={self.exclude!r})"
