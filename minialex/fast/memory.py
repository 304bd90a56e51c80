"""The one process-wide setting minialex makes: glibc's malloc keeps large freed blocks.

A training step allocates and frees the same large temporaries every time (tiles, columns,
gradients: about 1 GB for AlexNet at batch 32). By default glibc maps each block over 32 MB
afresh from the kernel and unmaps it when NumPy frees it, so every step faults in and zeroes
new pages: 0.28 s of system time in a 1.5 s step on 2 cores (18k page faults per step; 84 once
the blocks are kept). Kept in the heap, the next step reuses them. The peak resident memory is
the same; what changes is that it is not returned between steps. Switched on last in the
README's table "What each fast path buys" (`seed`, batch 32, 2 cores): 817 -> 734 ms, 1.11x.

It is made when minialex is imported, unless the fast path "memory" is off (MINIALEX_FAST=0,
or a list without it) or MINIALEX_MALLOC=system. It cannot be taken back later in the process:
set_fast(False) after the import leaves it as it is.
"""
import ctypes
import os
import sys

from .. import dispatch

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # from glibc's malloc.h


def keep_freed_memory():
    """Ask glibc's malloc to serve large blocks from its heap and keep them once freed.
    Returns True when the setting took."""
    if not sys.platform.startswith("linux") or os.environ.get("MINIALEX_MALLOC") == "system":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (musl, ...): nothing to tune
        return False
    kept = any(libc.mallopt(M_MMAP_THRESHOLD, size) == 1 for size in (1 << 30, 32 << 20))
    return kept and libc.mallopt(M_TRIM_THRESHOLD, 1 << 31) == 1


KEEPS_FREED_MEMORY = False  # whether the setting was made in this process


def keep_freed_memory_if_enabled():
    """Called once by minialex/__init__.py, when every fast path's name is known."""
    global KEEPS_FREED_MEMORY
    if dispatch.is_enabled("memory") and not KEEPS_FREED_MEMORY:
        KEEPS_FREED_MEMORY = keep_freed_memory()
    return KEEPS_FREED_MEMORY
