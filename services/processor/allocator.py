"""glibc malloc tuned for decoding large images.

By default glibc gives each thread an arena of its own and hands every large
buffer back to the kernel when it is freed, so each image's pixel buffers are page-faulted
in again: at 12 MP that was ~27,000 faults and a third of the codec's time (`make bench`).
One arena, large buffers from the heap and no trimming keep those pages mapped. After an
image, a codec worker resident for more than TRIM_AFTER_BYTES beyond what it was when it
started hands them back with trim(), so that its resident memory stays bounded by the
images it decodes now, not by the largest it ever did. (Trimming after every image whose
estimate was that large cost a 12 MP requantise 28 ms of page faults on the next one:
65 ms of CPU per image instead of 36.)
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

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


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c"))
    except (OSError, TypeError):
        return None


def resident_bytes() -> int:
    """This process's resident memory (/proc/self/statm); 0 where there is no /proc."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def trim() -> None:
    """Returns the heap's free memory to the kernel (malloc_trim), where glibc can."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def tune_malloc() -> bool:
    """Applies SETTINGS through mallopt; call in a codec worker before it decodes. False where
    the C library is not glibc."""
    libc = _libc()
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        log.info("not glibc: malloc left as it is")
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return all(mallopt(option, value) == 1 for option, value in SETTINGS.items())
