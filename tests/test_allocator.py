"""tuning/allocator.py: glibc is told to keep freed memory, by the CLI before any work."""
from __future__ import annotations

import subprocess
import sys

import pytest

from tuning import allocator


class _FakeMallopt:
  """Records calls; takes `argtypes`/`restype` as a ctypes function does."""

  def __init__(self, result: int = 1):
    self.calls, self.result = [], result

  def __call__(self, param, value):
    self.calls.append((param, value))
    return self.result


@pytest.fixture
def mallopt(monkeypatch):
  fake = _FakeMallopt()
  monkeypatch.setattr(allocator.ctypes, "CDLL", lambda name: type("Libc", (), {"mallopt": fake}))
  monkeypatch.setattr(allocator.sys, "platform", "linux")
  monkeypatch.delenv("TUNING_MALLOC", raising=False)
  return fake


def test_sets_every_setting(mallopt):
  assert allocator.keep_freed_memory()
  assert mallopt.calls == list(allocator.SETTINGS)


def test_a_refused_setting_is_reported(mallopt):
  mallopt.result = 0
  assert not allocator.keep_freed_memory()


def test_system_malloc_on_request_and_off_linux(mallopt, monkeypatch):
  monkeypatch.setenv("TUNING_MALLOC", "system")
  assert not allocator.keep_freed_memory()
  monkeypatch.delenv("TUNING_MALLOC")
  monkeypatch.setattr(allocator.sys, "platform", "darwin")
  assert not allocator.keep_freed_memory()
  assert mallopt.calls == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_real_glibc_accepts_the_settings():
  # In a child: the settings stay for the life of the process.
  code = "from tuning import allocator; assert allocator.keep_freed_memory()"
  subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_blocks_over_2_gib_stay():
  """A deep CPU step's temporaries and earlier runs' leftovers exceed 2 GiB of heap: a
  trim threshold of INT_MAX (the largest positive `mallopt` value) gave a 2.2 GiB free
  top back to the OS, and the next step faulted it all in again."""
  code = """
import ctypes
from tuning import allocator
assert allocator.keep_freed_memory()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
size = 2200 * 2**20
block = libc.malloc(size)
ctypes.memset(block, 1, size)  # fault every page in
libc.free(block)
rss_mb = int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1]) // 1024
assert rss_mb > 2000, f"{rss_mb} MB resident after the free: the heap was trimmed"
"""
  subprocess.run([sys.executable, "-c", code], check=True)
