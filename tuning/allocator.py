"""Keep freed memory in the process, so that XLA's CPU steps stop page-faulting.

A deep train step on CPU allocates hundreds of MB of temporaries and frees them
at its end. glibc's malloc serves blocks that big with mmap and returns them to
the OS on free (and trims the heap's top), so the next step faults every page
in again, zero-filled: 217k minor faults per MobileNetV2 `all` step at 96 px,
against torch's 21k (benchmarks/README.md). Told to keep freed memory (by the
environment variables below), malloc reused it: the same step ran at 69 img/s
instead of 49, for 1.3-1.7x the peak RSS. Accelerators allocate device memory through XLA's own allocator; this only
concerns the host.

glibc reads these settings from `MALLOC_*_` environment variables at start-up;
`mallopt` sets them at run time, so the CLI needs no re-exec. Elsewhere (macOS,
musl) nothing changes. `TUNING_MALLOC=system` leaves malloc as it is.
"""
from __future__ import annotations

import ctypes
import os
import sys

# mallopt parameters, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8

SETTINGS = (
    (_M_MMAP_MAX, 0),  # no mmap per block: big blocks come from the heap, and stay
    (_M_TRIM_THRESHOLD, -1),  # never give the heap's free top back: -1 is SIZE_MAX to glibc
    (_M_ARENA_MAX, 1),  # one heap: threads reuse what others freed
)


def keep_freed_memory() -> bool:
  """Sets glibc's malloc to keep and reuse freed memory; False where that is not glibc."""
  if not sys.platform.startswith("linux") or os.environ.get("TUNING_MALLOC") == "system":
    return False
  try:
    mallopt = ctypes.CDLL("libc.so.6").mallopt
  except (OSError, AttributeError):  # not glibc
    return False
  mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
  return all(mallopt(param, value) == 1 for param, value in SETTINGS)
