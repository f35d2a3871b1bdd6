"""Measurements in processes of their own that take turns on the machine, window by window.

Two frameworks timed one after the other are minutes apart, and on a shared
machine the speed of the same step drifts by 20-50 % over minutes (benchmarks/
README.md): their ratio then holds that drift. Here each measurement runs in a
fresh process, but only while it holds the turn: it gives the turn back by calling
`between()` (the timing loop does before each timed window, `common.images_per_
second`), and the processes are handed turns in rotating order (A B, B A, A B, ...).
Nothing runs beside a timed window, and a window of one framework lies next to
the same window of the other.
"""
from __future__ import annotations

import multiprocessing
import os
import traceback
from typing import Any, Callable, Sequence

# (function, its positional arguments, environment variables set before it runs)
Call = tuple[Callable[..., Any], tuple, dict[str, str]]


def _serve(conn, fn: Callable[..., Any], args: tuple, environ: dict[str, str]) -> None:
  """Worker: waits for its first turn, runs `fn(*args, between=...)`, sends its result."""
  os.environ.update(environ)  # before JAX starts its backend, which reads XLA_FLAGS once

  def between() -> None:
    conn.send(None)  # this turn is over
    wait_for_turn()

  def wait_for_turn() -> None:
    try:
      conn.recv()
    except EOFError:  # the parent stopped the measurements (another one failed)
      raise SystemExit(1) from None
  wait_for_turn()
  try:
    result = fn(*args, between=between)
  except Exception:  # pylint: disable=broad-except  (reported to the parent, which raises)
    conn.send(("error", traceback.format_exc()))
  else:
    conn.send(("result", result))
  conn.close()


def in_turns(calls: Sequence[Call]) -> list[Any]:
  """Each `fn(*args, between=...)` of `calls` in a new interpreter, one process running at a
  time; returns their results in order. A worker that fails raises RuntimeError here, with
  its traceback, and the others are stopped."""
  context = multiprocessing.get_context("spawn")
  workers = []
  try:
    for fn, args, environ in calls:
      parent, child = context.Pipe()
      # Not a daemon: a measurement may start processes of its own (data loaders). If this
      # process dies, the workers' pipes close and they exit when next waiting for a turn.
      process = context.Process(target=_serve, args=(child, fn, args, environ))
      process.start()
      child.close()
      workers.append((process, parent))
    results: dict[int, Any] = {}
    pending, turn_round = list(range(len(workers))), 0
    while pending:
      for index in pending[::-1] if turn_round % 2 else list(pending):
        process, conn = workers[index]
        conn.send(True)
        try:
          message = conn.recv()
        except EOFError:
          process.join()
          raise RuntimeError(f"{_name(calls[index])} died (exit code {process.exitcode})"
                             ) from None
        if message is None:
          continue
        kind, value = message
        if kind == "error":
          raise RuntimeError(f"{_name(calls[index])} failed:\n{value}")
        results[index] = value
        pending.remove(index)
      turn_round += 1
    return [results[i] for i in range(len(workers))]
  finally:
    for process, conn in workers:
      conn.close()
      process.join(timeout=10)
      if process.is_alive():
        process.terminate()


def _name(call: Call) -> str:
  fn, args, _ = call
  return f"{fn.__name__}{tuple(args)}"
