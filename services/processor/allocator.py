"""glibc malloc tuned for decoding large images in a thread pool.

By default glibc gives each codec thread an arena of its own and hands every large
buffer back to the kernel when it is freed, so each image's pixel buffers are page-faulted
in again: at 12 MP that was ~27,000 faults and a third of the codec's time (`make bench`).
One arena, large buffers from the heap and no trimming keep those pages mapped; peak memory
stays bounded by the images in the codec at once.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

# From glibc's malloc.h.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8

SETTINGS = {
    M_ARENA_MAX: 1,
    M_MMAP_THRESHOLD: 32 * 1024 * 1024,
    M_TRIM_THRESHOLD: 1024 * 1024 * 1024,
}


def tune_malloc() -> bool:
    """Applies SETTINGS through mallopt; call before the codec threads start. False where
    the C library is not glibc."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        log.info("not glibc: malloc left as it is")
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return all(mallopt(option, value) == 1 for option, value in SETTINGS.items())
