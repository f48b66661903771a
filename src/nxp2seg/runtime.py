"""Process-level settings that make CPU training and inference faster.

:func:`keep_freed_memory`: glibc's ``malloc`` serves every block above its
mmap threshold (at most 32 MB) with a fresh ``mmap`` and hands it back to the
kernel on ``free``. A 3D U-Net step allocates and frees dozens of such
activations (one 16-channel 128x112x16 batch of two is 29 MB), so every step
the kernel zero-fills the same pages again: about 2 million page faults per
25 steps and a third of the CPU time in the kernel on a 2-core machine.
Turning the mmap path off and never trimming the heap keeps freed blocks for
reuse. Measured on 2 cores (``scripts/benchmark_allocator.py``,
docs/performance.md): the results are bit-identical, the step 15-25% faster,
the kernel time nearly gone. Memory once used is kept by the process until it
ends instead of being returned between steps (the default training's resident
set stayed at ~1.6 GB).

Set ``NXP2SEG_MALLOC=default`` in the environment to leave glibc as it is.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

__all__ = ["keep_freed_memory"]

log = logging.getLogger(__name__)

# mallopt parameters (glibc malloc.h)
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4
_TOP_PAD_BYTES = 64 << 20
_done: bool | None = None


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse instead of returning it to the kernel.

    Idempotent; a no-op (returning ``False``) outside Linux/glibc or with
    ``NXP2SEG_MALLOC=default``.

    Returns:
        Whether the setting is in effect.
    """
    global _done
    if _done is not None:
        return _done
    _done = False
    if os.environ.get("NXP2SEG_MALLOC", "").lower() == "default" or not sys.platform.startswith("linux"):
        return _done
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other libcs: nothing to set
        return _done
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(_M_MMAP_MAX, 0) == 1
    ok = ok and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
    ok = ok and mallopt(_M_TOP_PAD, _TOP_PAD_BYTES) == 1
    _done = bool(ok)
    log.debug("glibc malloc keeps freed memory: %s", _done)
    return _done
