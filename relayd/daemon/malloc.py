"""The daemon's C allocator: one glibc malloc arena for all its threads, set before any starts.

glibc gives each thread that allocates its own arena (up to eight per core). The daemon's
worker threads read message bodies and run SQLite there, and the event loop frees those
bodies: each arena then keeps pages of its own that the others cannot reuse. Measured on a
100,000-message drain (benchmarks/depth.py): peak RSS 71 MiB with glibc's default, 64 MiB
with one arena, at the same rate (the threads hold the interpreter lock for most of their
allocations anyway). The environment's MALLOC_ARENA_MAX, if set, is the user's and is kept.

ctypes instead of a dependency: it is one call into the C library the interpreter already uses.
"""

from __future__ import annotations

import os

M_ARENA_MAX = -8  # glibc's <malloc.h>


def one_arena() -> bool:
    """Limit glibc to one malloc arena (not on other C libraries, nor when the user chose);
    whether it was set."""
    if "MALLOC_ARENA_MAX" in os.environ or not _glibc():
        return False
    import ctypes

    return bool(ctypes.CDLL(None).mallopt(M_ARENA_MAX, 1))


def _glibc() -> bool:
    """Whether the C library is glibc (the only one with M_ARENA_MAX)."""
    try:
        return os.confstr("CS_GNU_LIBC_VERSION") is not None
    except (ValueError, OSError):
        return False
