"""Installed by ``scope-ebpf run`` in a CPython 3.11 child (via PYTHONPATH).

CPython 3.11 fires the function__entry/function__return USDT probes only
while a profile or trace hook is set. ``slice`` is the cheapest hook there is:
a C callable that accepts (frame, event, arg) and does nothing with them.
The child's environment and sys.path are restored before its program runs,
and the user's own sitecustomize, if any, is imported afterwards.

Thread names: 3.11 keeps threading.Thread names to itself, so each thread
started by threading reports its own, once, as an audit event the tracer reads
with its audit probe ("scope_ebpf.thread:" + name, at most 63 bytes). No file,
no fd, no blocking; an error (an audit hook that raises) is swallowed.
"""

import os
import sys
import threading

_here = os.path.dirname(os.path.abspath(__file__))
os.environ.pop("SCOPE_EBPF_HOOK", None)
_orig = os.environ.pop("SCOPE_EBPF_PYTHONPATH", None)
if _orig is None:
    os.environ.pop("PYTHONPATH", None)
else:
    os.environ["PYTHONPATH"] = _orig
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
_PREFIX = "scope_ebpf.thread:"
_NAME_BYTES = 63 - len(_PREFIX)  # the tracer keeps 63 bytes of an audit event name


def _report(name):
    try:
        cut = name.encode("utf-8", "replace")[:_NAME_BYTES].decode("utf-8", "ignore")
        sys.audit(_PREFIX + cut)
    except Exception:  # noqa: BLE001 - never raise into the traced program
        pass


def _first(frame, event, arg):
    """A new thread's first profile event: the cheap hook from now on, then
    report the thread's name (the thread is registered in threading by now)."""
    try:
        sys.setprofile(slice)
        _report(threading.current_thread().name)
    except Exception:  # noqa: BLE001 - a profile function that raises would raise in the thread
        pass


sys.setprofile(slice)
threading.setprofile(_first)
_report(threading.main_thread().name)

del sys.modules["sitecustomize"]
try:
    import sitecustomize  # noqa: F401  (the user's own, now that ours is off the path)
except ImportError:
    pass
