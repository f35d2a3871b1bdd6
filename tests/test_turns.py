"""benchmarks/turns.py: measurements in processes of their own that take turns, window by window."""
from __future__ import annotations

import json
import multiprocessing
import os
import time

import pytest

from benchmarks import turns

WINDOWS = 4


def record_windows(name: str, path: str, *, between) -> str:
  """A stand-in measurement: `WINDOWS` timed windows, each logged with its start and end."""
  for _ in range(WINDOWS):
    between()
    start = time.monotonic()
    time.sleep(0.05)
    with open(path, "a", encoding="utf-8") as f:
      f.write(json.dumps([name, start, time.monotonic()]) + "\n")
  return f"{name} done, TURNS_TEST={os.environ.get('TURNS_TEST')}"


def fail(*, between) -> None:
  between()
  raise ValueError("no such model: alexnet9")


def test_processes_alternate_and_never_overlap(tmp_path):
  path = str(tmp_path / "windows.jsonl")
  results = turns.in_turns([(record_windows, ("jax", path), {"TURNS_TEST": "a"}),
                            (record_windows, ("torch", path), {})])
  assert results == ["jax done, TURNS_TEST=a", "torch done, TURNS_TEST=None"]
  with open(path, encoding="utf-8") as f:
    windows = sorted((json.loads(line) for line in f), key=lambda w: w[1])
  assert len(windows) == 2 * WINDOWS
  for (_, _, end), (_, start, _) in zip(windows, windows[1:]):
    assert end <= start  # one window at a time
  names = [name for name, _, _ in windows]
  # Each framework's k-th window lies next to the other's k-th (the order rotating).
  assert all(sorted(names[i:i + 2]) == ["jax", "torch"] for i in range(0, len(names), 2)), names
  assert names[:2] != names[2:4]


def test_one_process_alone_runs_through(tmp_path):
  path = str(tmp_path / "windows.jsonl")
  assert turns.in_turns([(record_windows, ("jax", path), {})]) == ["jax done, TURNS_TEST=None"]


def test_a_failing_process_raises_with_its_traceback_and_stops_the_other(tmp_path):
  path = str(tmp_path / "windows.jsonl")
  with pytest.raises(RuntimeError, match=r"(?s)fail\(\) failed.*no such model: alexnet9"):
    turns.in_turns([(record_windows, ("jax", path), {}), (fail, (), {})])
  windows = 0
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      windows = len(f.readlines())
  assert windows < WINDOWS  # the other stopped, not run to its end


def start_a_process(*, between) -> int:
  """A measurement that starts a process of its own (as data loaders do)."""
  between()
  child = multiprocessing.get_context("spawn").Process(target=os.getpid)
  child.start()
  child.join()
  return child.exitcode


def test_a_measurement_may_start_processes():
  assert turns.in_turns([(start_a_process, (), {})]) == [0]
