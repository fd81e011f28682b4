"""Duration/size parsing and formatting: exact values and exact error lines."""

from __future__ import annotations

import pytest

from scope_ebpf.errors import ScopeError
from scope_ebpf.units import human_bytes, human_ns, parse_duration, parse_size


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("500us", 500_000),
        ("1.5ms", 1_500_000),
        ("2s", 2_000_000_000),
        ("100ns", 100),
        ("1m", 60_000_000_000),
        ("1h", 3_600_000_000_000),
        ("0s", 0),
        ("-0s", 0),
        ("  2 ms ", 2_000_000),
        (".5s", 500_000_000),
        ("1.5µs", 1500),
    ],
)
def test_parse_duration(text: str, ns: int) -> None:
    assert parse_duration(text, "--min-duration") == ns


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("500", "--min-duration needs a unit: 500us, 2ms, 1s"),
        ("1.5", "--min-duration needs a unit: 500us, 2ms, 1s"),
        ("-1ms", "--min-duration must not be negative: '-1ms'"),
        ("", "--min-duration is empty: give a duration like 500us, 2ms, 1s"),
        ("5xs", "--min-duration: unknown unit 'xs' in '5xs': use one of ns, us, ms, s, m, h"),
        ("1M", "--min-duration: unknown unit 'M' in '1M': use one of ns, us, ms, s, m, h"),
        ("abc", "--min-duration: cannot read 'abc' as a duration: use e.g. 500us, 2ms, 1s"),
        ("1e3ms", "--min-duration: cannot read '1e3ms' as a duration: use e.g. 500us, 2ms, 1s"),
    ],
)
def test_parse_duration_errors(text: str, message: str) -> None:
    with pytest.raises(ScopeError) as e:
        parse_duration(text, "--min-duration")
    assert str(e.value) == message


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("64MB", 64 * 1024**2),
        ("10GB", 10 * 1024**3),
        ("512KB", 512 * 1024),
        ("1.5GiB", 1536 * 1024**2),
        ("100B", 100),
        ("1k", 1024),
        ("2 TiB", 2 * 1024**4),
        ("0B", 0),
    ],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text, "--max-size") == size


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("64", "--max-size needs a unit: 64MB, 1GB, 100B"),
        ("-1MB", "--max-size must not be negative: '-1MB'"),
        (
            "3XB",
            "--max-size: unknown unit 'XB' in '3XB': "
            "use one of B, K, KB, KiB, M, MB, MiB, G, GB, GiB, T, TB, TiB",
        ),
    ],
)
def test_parse_size_errors(text: str, message: str) -> None:
    with pytest.raises(ScopeError) as e:
        parse_size(text, "--max-size")
    assert str(e.value) == message


@pytest.mark.parametrize(
    ("ns", "text"),
    [
        (0, "0 ns"),
        (830, "830 ns"),
        (1000, "1.0 us"),
        (1_250_000, "1.25 ms"),
        (12_345_678, "12.3 ms"),
        (123_456_789, "123 ms"),
        (999_999, "1.0 ms"),
        (2_000_000_000, "2.0 s"),
        (7200 * 10**9, "7200 s"),
        (-1500, "-1.5 us"),
    ],
)
def test_human_ns(ns: int, text: str) -> None:
    assert human_ns(ns) == text


@pytest.mark.parametrize(
    ("n", "text"),
    [(0, "0 B"), (512, "512 B"), (1023, "1023 B"), (1024, "1.0 KB"), (1536 * 1024, "1.5 MB")],
)
def test_human_bytes(n: int, text: str) -> None:
    assert human_bytes(n) == text
    if n >= 1024:  # what we print reads back as (about) the same size
        assert parse_size(text, "--x") == n
