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
