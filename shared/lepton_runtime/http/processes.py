"""Process plumbing shared by the function server and the local stack."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import signal

_PR_SET_PDEATHSIG = 1


def die_with_parent(signum: int = signal.SIGTERM) -> None:
    """In a child process: be sent `signum` when the parent dies, even by kill -9 (Linux).

    Without it a worker whose supervisor was killed would keep serving, orphaned.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signum)


_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8


def bound_heap(mmap_threshold: int = 128 * 1024, arenas: int = 2) -> None:
    """Make glibc give large buffers back to the system as soon as they are freed.

    By default glibc raises its mmap threshold to the size of any large block freed (up to
    32 MiB) and keeps up to 8 heaps per core: after a few decoded images and request bodies,
    later ones of that size come from heaps that never shrink, and a worker under concurrent
    large requests was measured at 540-630 MB peak instead of 250. A fixed threshold (which
    also turns off that adjustment) and two arenas keep the peak at what is in use.
    No effect where the C library is not glibc.
    """
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold)
        libc.mallopt(_M_ARENA_MAX, arenas)


def quiet_collector() -> None:
    """While a server loads: no cyclic garbage collection (imports and model loading make
    hundreds of thousands of objects that all live as long as the process; collecting among them
    is wasted start-up time). `settle_heap` turns collection back on."""
    gc.disable()


def settle_heap() -> None:
    """Once a server has loaded what it keeps for its lifetime: set those objects aside from
    the cyclic collector (gc.freeze) and collect as usual from then on.

    A full collection otherwise walks every one of them: measured at ~40 ms, every ~20,000
    requests of a worker, a stop that lands in the slowest percentile of answers. Called before
    forking too, so workers do not touch (and so copy) the pages of what they inherited. The
    few thousand objects that are garbage by then stay (collecting them costs ~100 ms of start).
    """
    gc.freeze()
    gc.enable()
