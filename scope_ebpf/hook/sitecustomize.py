"""Installed by ``scope-ebpf run`` in a CPython 3.11 child (via PYTHONPATH).

CPython 3.11 fires the function__entry/function__return USDT probes only
while a profile or trace hook is set. ``slice`` is the cheapest hook there is:
a C callable that accepts (frame, event, arg) and does nothing with them.
The child's environment and sys.path are restored before its program runs,
and the user's own sitecustomize, if any, is imported afterwards.
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
sys.setprofile(slice)
threading.setprofile(slice)

del sys.modules["sitecustomize"]
try:
    import sitecustomize  # noqa: F401  (the user's own, now that ours is off the path)
except ImportError:
    pass
