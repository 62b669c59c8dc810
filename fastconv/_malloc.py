"""Keep freed large arrays' memory in the process instead of handing it back at once.

Each kernel call allocates its output with NumPy, and glibc's ``malloc`` gives
arrays above its mmap threshold their own mapping, or later (after it raised the
threshold) returns the top of its heap to the system whenever more than twice
that much is free there.  A model's activations, or a separable convolution's
intermediate and output, are megabytes each and are freed and allocated again on
every call: the system then zero-fills every page anew at its first touch.
MobileNetV2 at batch 1 took ~2800 such page faults per prediction (on this
2-core machine: medians 18-22 ms against 10-16 ms with the setting, three
alternating runs each; 35 faults per prediction with it).

So, on glibc, fastconv sets (``mallopt``) the mmap threshold to
:data:`MMAP_THRESHOLD` (arrays at least that large still get their own mapping,
returned to the system when freed) and the trim threshold to
:data:`TRIM_THRESHOLD` (up to that much freed memory at the heap's top stays with
the process for the next allocations).  These are glibc's own tunables, and
``MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=134217728`` in the
environment has the same effect.  Nothing is changed when the user set one of
glibc's malloc variables, or ``FASTCONV_MALLOC_TUNING=0``, off glibc, or with
jemalloc, tcmalloc or mimalloc preloaded.
"""

import ctypes
import os
import sys

#: Arrays of at least this many bytes are mapped on their own (glibc's dynamic threshold
#: stops rising here too).
MMAP_THRESHOLD = 32 << 20
#: Freed memory at the top of the heap kept for later allocations, at most.
TRIM_THRESHOLD = 128 << 20

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

_USER_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")
# allocators preloaded in glibc's place, whose own settings are theirs to make
_OTHER_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc")


def configure():
    """Apply the two thresholds (see the module docstring) unless the user configured
    malloc or opted out; returns whether they were applied."""
    if not sys.platform.startswith("linux") or os.environ.get("FASTCONV_MALLOC_TUNING", "1") == "0" \
            or any(v in os.environ for v in _USER_VARIABLES) or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", "") \
            or any(a in os.environ.get("LD_PRELOAD", "") for a in _OTHER_ALLOCATORS):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # glibc only: musl's mallopt does nothing
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))


applied = configure()
