"""What both frameworks' measurements share: the schemes, the timing loop, memory, the machine."""
from __future__ import annotations

import dataclasses
import os
import platform
import resource
import statistics
import time
from typing import Callable, Sequence

from tuning import depth

WARMUP_STEPS = 2
FORWARD, HEAD_CLIP, HEAD_CACHED = "forward", "head+clip", "head-cached"
CLIP_NORM = 1.0


@dataclasses.dataclass(frozen=True)
class Scheme:
  """One measurement: the eval forward pass (`trainable_from` None) or a train step.

  `clip_norm`: the step clips the global gradient norm first, which reads the
  frozen blocks' gradients too (`head+clip`). `cached`: the step starts at block
  `trainable_from`, on the frozen blocks' output computed once (`head-cached`,
  what training runs with `config.cache_features`).
  """
  name: str
  trainable_from: int | None
  clip_norm: float | None = None
  cached: bool = False


def scheme_names(block_names: Sequence[str]) -> list[str]:
  """forward, head, head+clip, every freeze boundary from the top down, all.

  `from:<first block>` is `all` and `from:<last block>` is `head`, so they are
  not repeated. `head-cached` is measured when asked for (`--schemes`).
  """
  return [FORWARD, "head", HEAD_CLIP, *(f"from:{b}" for b in reversed(block_names[1:-1])), "all"]


def applies(name: str, block_names: Sequence[str]) -> bool:
  return name in (FORWARD, HEAD_CLIP, HEAD_CACHED, "head", "all") or name in (
      f"from:{b}" for b in block_names)


def _resolve(name: str, block_names: Sequence[str]) -> Scheme:
  if name == FORWARD:
    return Scheme(name, None)
  if name == HEAD_CLIP:
    return Scheme(name, depth.parse_scheme("head", block_names).trainable_from, CLIP_NORM)
  if name == HEAD_CACHED:
    return Scheme(name, depth.parse_scheme("head", block_names).trainable_from, cached=True)
  return Scheme(name, depth.parse_scheme(name, block_names).trainable_from)


def schemes(block_names: Sequence[str], requested: Sequence[str] | None = None) -> list[Scheme]:
  """The requested schemes that apply to a model (default: all of `scheme_names`)."""
  names = (scheme_names(block_names) if requested is None
           else [n for n in requested if applies(n, block_names)])
  return [_resolve(n, block_names) for n in names]


def no_pause() -> None:
  pass


def images_per_second(run_steps: Callable[[int], None], batch: int, repeats: int, steps: int,
                      between: Callable[[], None] = no_pause) -> dict[str, float]:
  """Median, min and max images/s over `repeats` timed runs of `steps` steps, and each run's.

  `run_steps(k)` runs k steps and returns once they are finished (JAX dispatches
  asynchronously, so it must block). `WARMUP_STEPS` untimed steps go first:
  the first calls of a step allocate its buffers and fill the caches. Also
  counts the process's minor page faults per timed step: buffers the allocator
  maps afresh every step (glibc mmaps blocks above its 128 KB-32 MB threshold)
  are faulted in, page by page, every step. `between()` is called before each timed
  run: there the process gives its turn on the machine to another (benchmarks/turns.py).
  """
  run_steps(WARMUP_STEPS)
  rates = []
  faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  for _ in range(repeats):
    between()
    start = time.perf_counter()
    run_steps(steps)
    rates.append(batch * steps / (time.perf_counter() - start))
  faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
  return {"img_per_s": statistics.median(rates), "img_per_s_min": min(rates),
          "img_per_s_max": max(rates), "img_per_s_runs": rates,
          "minor_faults_per_step": faults / (repeats * steps)}


def matmul_gflops(matmul: Callable[[], None], n: int, repeats: int = 5) -> float:
  """The best rate of `matmul()`, one finished float32 n x n matmul, after one warm-up call."""
  matmul()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    matmul()
    best = min(best, time.perf_counter() - start)
  return 2 * n**3 / best / 1e9


def reset_peak_rss() -> str:
  """Starts a new peak-RSS window; returns the scope `peak_rss_mb` then measures.

  Linux resets the process's high-water mark on writing 5 to clear_refs, so each
  measurement gets its own peak ("measurement": memory that earlier measurements
  left resident still counts). Elsewhere the peak is the whole process's ("process").
  """
  try:
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
      f.write("5")
    return "measurement"
  except OSError:
    return "process"


def peak_rss_mb() -> float:
  try:
    with open("/proc/self/status", encoding="ascii") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) / 1024
  except OSError:
    pass
  maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux, bytes on macOS
  return maxrss / 2**20 if platform.system() == "Darwin" else maxrss / 1024


def host_device_flags(xla_flags: str, n: int) -> str:
  """`xla_flags` (XLA_FLAGS) splitting the CPU into `n` devices, any earlier count replaced.

  XLA reads it when JAX starts its backend; the devices share the host's cores.
  """
  flag = "--xla_force_host_platform_device_count"
  return " ".join([*(f for f in xla_flags.split() if not f.startswith(f"{flag}=")), f"{flag}={n}"])


def cores() -> int:
  """The cores this process may run on: XLA's CPU thread pool uses them all."""
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def machine() -> dict:
  """The fields every row carries to say where it was measured."""
  model = platform.processor()
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")),
                   model)
  except OSError:
    pass
  return {"platform": platform.platform(), "cpu": model, "cpu_count": os.cpu_count(),
          "cores_used": cores(), "python": platform.python_version()}


def write_report(path: str, title: str, rows: Sequence[dict], setup: str, *body: str,
                 load: str = "during the run") -> None:
  """A bench markdown file: `title`, a line saying where and how it ran (machine, then
  `setup`, then the 1-min load average's range over `rows`), then `body`."""
  first, loads = rows[0], [row["loadavg_1m"] for row in rows]
  where = (f"{first['date'][:10]}, {first['cpu']}, {first['cores_used']} of "
           f"{first['cpu_count']} cores")
  text = "\n".join([f"# {title}", "", f"{where}{setup} 1-min load average {load}: "
                    f"{min(loads):.1f}–{max(loads):.1f}.", "", *body, ""])
  with open(path, "w", encoding="utf-8") as f:
    f.write(text)
