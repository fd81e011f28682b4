"""Protecting the target: the circuit breaker's controller half, and self-limits.

The kernel half trips the breaker by itself the moment probe hits exceed the
limit (bpf/scope.bpf.c, breaker_blocks): rows stop at once. This half then
detaches the function probes, so CPython's probe semaphores drop to zero and
the target runs at native speed, and after a back-off re-attaches them on
probation (half-open): a new trip opens it again with a doubled back-off,
a quiet probation closes it. Every transition is returned for the output.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from .. import events

CLOSED = events.const("BREAKER_CLOSED")
OPEN = events.const("BREAKER_OPEN")
HALF_OPEN = events.const("BREAKER_HALF_OPEN")
WINDOW_S = events.const("BREAKER_WINDOW_NS") / 1e9


@dataclass
class Transition:
    mono_ns: int          # CLOCK_MONOTONIC (bpf_ktime_get_ns) time of the change
    state: str            # 'open' | 'half-open' | 'closed'
    rate: float | None    # probe hits/s that caused it
    backoff_s: float | None
    reason: str


class Breaker:
    """Drives the kernel breaker state through a Program's ``breaker`` map."""

    def __init__(self, program, rate: float, detach: Callable[[], None],
                 attach: Callable[[], None], backoff_s: float = 1.0,
                 max_backoff_s: float = 60.0, probation_s: float = 1.0) -> None:
        self.program = program
        self.rate = rate
        self._detach, self._attach = detach, attach
        self.initial_backoff = self.backoff = backoff_s
        self.max_backoff = max_backoff_s
        self.probation = probation_s
        self.state = CLOSED
        self._reattach_at = 0.0
        self._close_at = 0.0
        self.trips = 0

    def _read(self):
        return self.program.breaker()

    def _write(self, **fields) -> None:
        self.program.set_breaker(**fields)

    def trip(self, reason: str) -> Transition | None:
        """Open the breaker from user space (a self-limit was reached)."""
        if self.state == OPEN:
            return None
        self._write(state=OPEN, opened_ns=time.monotonic_ns(), tripped_count=0)
        return self._opened(reason, None)

    def poll(self) -> list[Transition]:
        """Follow the kernel's state; act on time-outs. Cheap: one map lookup."""
        out: list[Transition] = []
        now = time.monotonic()
        if self.state != OPEN:
            b = self._read()
            if b["state"] == OPEN:
                rate = (int(b["tripped_count"]) * 1e9 / max(int(b["tripped_after_ns"]), 1000)
                        if b["tripped_count"] else None)
                why = ("probe hits over --breaker-rate" if self.state == CLOSED
                       else "still over --breaker-rate on probation")
                out.append(self._opened(why, rate, int(b["opened_ns"])))
            elif self.state == HALF_OPEN and now >= self._close_at:
                self._write(state=CLOSED)
                self.state = CLOSED
                self.backoff = self.initial_backoff
                out.append(Transition(time.monotonic_ns(), "closed", None, None,
                                      f"quiet for {self.probation:g} s on probation"))
        elif now >= self._reattach_at:
            b = self._read()
            self._write(state=HALF_OPEN, generation=int(b["generation"]) + 1, count=0,
                        window_start_ns=time.monotonic_ns())
            self.state = HALF_OPEN
            self._attach()
            self._close_at = now + self.probation
            out.append(Transition(time.monotonic_ns(), "half-open", None, None,
                                  f"re-attached after {self.backoff:g} s"))
            self.backoff = min(self.backoff * 2, self.max_backoff)
        return out

    def _opened(self, reason: str, rate: float | None, at_ns: int | None = None) -> Transition:
        self._detach()
        self.state = OPEN
        self.trips += 1
        self._reattach_at = time.monotonic() + self.backoff
        return Transition(at_ns or time.monotonic_ns(), "open", rate, self.backoff, reason)
