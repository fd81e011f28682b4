"""Durations and sizes as users type them on the command line, and back.

One duration grammar for every option (``-d``, ``--min-duration``, ``--since``):
a number and a unit, ``500us``, ``1.5ms``, ``30s``, ``5m``. Units are required
(except ``B`` for plain bytes): a bare ``500`` on ``--min-duration`` could mean
ns, us or ms, and guessing wrong silently drops or floods rows, so it is
rejected with a message showing valid forms. Only where a bare number has
always meant seconds (``-d/--duration``) does the caller name that default.

Sizes use powers of 1024 for every spelling (``K``/``KB``/``KiB`` = 1024,
``M``/``MB``/``MiB`` = 1024**2, ``G``, ``T`` likewise), matching what ``du`` and
``ls -h`` print, so a size read off those tools means what the user expects.
Size units are case-insensitive; duration units are not (``M`` is not ``m``).
"""

from __future__ import annotations

import re
from decimal import Decimal

from scope_ebpf.errors import ScopeError

_DURATION_UNITS: dict[str, int] = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60 * 1_000_000_000,
    "h": 3600 * 1_000_000_000,
}

_SIZE_UNITS: dict[str, int] = {"b": 1}
for _power, _letter in enumerate("kmgt", start=1):
    for _suffix in ("", "b", "ib"):
        _SIZE_UNITS[_letter + _suffix] = 1024**_power

# A number (no exponent: "1e3ms" is more likely a typo than intent), then a unit.
_QUANTITY = re.compile(r"(?P<sign>[-+]?)\s*(?P<num>\d+(?:\.\d*)?|\.\d+)\s*(?P<unit>[^\d\s.]*)")


def _parse(
    text: str, option: str, units: dict[str, int], what: str, examples: str, fold: bool,
    bare: str | None = None,
) -> int:
    """Shared grammar for durations and sizes; returns the value in base units.

    ``fold`` lowercases the unit first: right for sizes (``mb`` = ``MB``) but not
    for durations, where ``M`` would silently become minutes. ``bare`` is the unit
    of a number given without one (None: a unit is required).
    """
    stripped = text.strip()
    if not stripped:
        raise ScopeError(f"{option} is empty: give a {what} like {examples}")
    m = _QUANTITY.fullmatch(stripped)
    if m is None:
        raise ScopeError(f"{option}: cannot read {text!r} as a {what}: use e.g. {examples}")
    if m["sign"] == "-" and Decimal(m["num"]) != 0:
        raise ScopeError(f"{option} must not be negative: {text!r}")
    unit = m["unit"] or bare
    if not unit:
        raise ScopeError(f"{option} needs a unit: {examples}")
    scale = units.get(unit.lower() if fold else unit)
    if scale is None:
        known = (
            "B, K, KB, KiB, M, MB, MiB, G, GB, GiB, T, TB, TiB" if fold else "ns, us, ms, s, m, h"
        )
        raise ScopeError(f"{option}: unknown unit {unit!r} in {text!r}: use one of {known}")
    return int(round(Decimal(m["num"]) * scale))


def parse_duration(text: str, option: str, bare: str | None = None) -> int:
    """Parse ``500us``, ``1.5ms``, ``2s``, ``100ns``, ``1m`` (minute), ``1h`` into nanoseconds.

    ``option`` (e.g. ``"--min-duration"``) names the flag in error messages so the
    user knows which argument to fix. ``bare`` (e.g. ``"s"``) is the unit of a
    number given without one; None requires a unit. Fractions of a nanosecond
    are rounded.
    """
    return _parse(text, option, _DURATION_UNITS, "duration", "500us, 2ms, 1s", False, bare)


def parse_size(text: str, option: str) -> int:
    """Parse ``64MB``, ``1.5GiB``, ``512KB``, ``100B`` into bytes (1024-based, see module doc).

    Fractions of a byte (``1.1KB``) are rounded to the nearest byte.
    """
    return _parse(text, option, _SIZE_UNITS, "size", "64MB, 1GB, 100B", True)


def _human(value: int, base: int, units: tuple[str, ...]) -> str:
    """Three significant digits, never fewer than one decimal below 100 ("2.0 s").

    The unit is chosen after rounding so 999_999 ns prints "1.0 ms", not "1000 us".
    """
    sign = "-" if value < 0 else ""
    value = abs(value)
    if value < base:
        return f"{sign}{value} {units[0]}"
    x = float(value)
    for i, unit in enumerate(units[1:], start=1):
        x /= base
        if x >= 100:
            shown = f"{x:.0f}"
        elif x >= 10:
            shown = f"{x:.1f}"
        else:
            shown = f"{x:.2f}".rstrip("0")
            shown = shown + "0" if shown.endswith(".") else shown
        if float(shown) < base or i == len(units) - 1:
            return f"{sign}{shown} {unit}"
    raise AssertionError("unreachable")


def human_ns(ns: int) -> str:
    """Nanoseconds for people: ``830 ns``, ``1.25 ms``, ``2.0 s`` (seconds is the largest unit)."""
    return _human(int(ns), 1000, ("ns", "us", "ms", "s"))


def human_bytes(n: int) -> str:
    """Bytes for people, 1024-based to match :func:`parse_size`: ``512 B``, ``1.5 MB``."""
    return _human(int(n), 1024, ("B", "KB", "MB", "GB", "TB", "PB"))
