"""Include/exclude verdicts and pattern validation."""

from __future__ import annotations

import pytest

from scope_ebpf.control.matchers import Matcher
from scope_ebpf.errors import ScopeError

VIEWS = "/srv/app/myapp/views.py"


def test_glob_over_file_and_function() -> None:
    m = Matcher(["*/myapp/*:*"], [])
    assert m.keep(VIEWS, "handle_get")
    assert not m.keep("/usr/lib/python3.11/json/decoder.py", "decode")
    assert Matcher(["*:handle_*"], []).keep(VIEWS, "handle_get")
    assert not Matcher(["*:handle_*"], []).keep(VIEWS, "xhandle_get")


def test_glob_without_colon_matches_function_only() -> None:
    m = Matcher(["fib"], [])
    assert m.keep("/x/fib.py", "fib")
    assert not m.keep("/x/fib.py", "fibx")
    assert not m.keep("/x/fib.py", "main")


def test_regex_is_searched_over_whole_string() -> None:
    m = Matcher(["re:myapp/.*:handle_(get|post)$"], [])
    assert m.keep(VIEWS, "handle_get")
    assert not m.keep(VIEWS, "handle_put")
    assert Matcher(["re:views"], []).keep(VIEWS, "anything")


def test_exclude_wins_and_no_includes_keeps_rest() -> None:
    m = Matcher(["*/myapp/*:*"], ["*:_*"])
    assert m.keep(VIEWS, "handle_get")
    assert not m.keep(VIEWS, "_private")
    only_exclude = Matcher([], ["re:^/usr/lib/"])
    assert only_exclude.keep(VIEWS, "f")
    assert not only_exclude.keep("/usr/lib/python3.11/os.py", "stat")


def test_none_names_are_empty_strings() -> None:
    assert Matcher(["*:"], []).keep(None, None)
    assert Matcher([], ["re:^:$"]).keep(None, None) is False
    assert Matcher(["re:^views"], []).keep(None, "views") is False  # subject is ":views"


def test_active_and_repr() -> None:
    assert not Matcher([], []).active
    assert Matcher([], []).keep(None, None)
    m = Matcher(["fib"], ["*:_*"])
    assert m.active
    assert repr(m) == "Matcher(include=['fib'], exclude=['*:_*'])"


def test_closed_brackets_are_fine() -> None:
    assert Matcher(["*:get[0-9]"], []).keep(VIEWS, "get7")
    assert Matcher(["[]]x"], []).keep(VIEWS, "]x")
    assert Matcher(["[[]x"], []).keep(VIEWS, "[x")


@pytest.mark.parametrize(
    ("include", "exclude", "message"),
    [
        (
            ["re:("],
            [],
            "bad --include pattern 're:(': missing ), unterminated subpattern at position 0",
        ),
        ([], ["re:a{2"], None),  # valid: Python treats an unclosed brace as literal
        ([""], [], "empty --include pattern: use e.g. '*/myapp/*:*', 'handle_*' or 're:REGEX'"),
        ([], ["  "], "empty --exclude pattern: use e.g. '*/myapp/*:*', 'handle_*' or 're:REGEX'"),
        (["re:"], [], "bad --include pattern 're:': empty regex after 're:'"),
        (
            [],
            ["*:get[0-9"],
            "bad --exclude pattern '*:get[0-9': '[' at position 5 has no closing ']'"
            " (write '[[]' for a literal '[')",
        ),
    ],
)
def test_bad_patterns(include: list[str], exclude: list[str], message: str | None) -> None:
    if message is None:
        Matcher(include, exclude)
        return
    with pytest.raises(ScopeError) as e:
        Matcher(include, exclude)
    assert str(e.value) == message


def test_name_matches_for_thread_names() -> None:
    assert Matcher.name_matches("worker-3", ["worker-*"])
    assert Matcher([], []).name_matches("io:loop", ["io:*"])
    assert Matcher.name_matches("MainThread", ["re:^Main"])
    assert not Matcher.name_matches("worker-3", ["main", "re:^io"])
    assert not Matcher.name_matches(None, [])
    with pytest.raises(ScopeError) as e:
        Matcher.name_matches("x", ["re:["])
    assert str(e.value).startswith("bad --thread-name pattern 're:[': unterminated character set")
