"""Process plumbing shared by the function server and the local stack."""

from __future__ import annotations

import contextlib
import ctypes
import signal

_PR_SET_PDEATHSIG = 1


def die_with_parent(signum: int = signal.SIGTERM) -> None:
    """In a child process: be sent `signum` when the parent dies, even by kill -9 (Linux).

    Without it a worker whose supervisor was killed would keep serving, orphaned.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signum)
