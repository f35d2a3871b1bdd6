"""A persistent XLA compilation cache for the CLI: sweeps compile the same programs again.

A run compiles its init, train step, evaluation step and feature trunk: 10-20 s
of a one-minute MobileNetV2 run on a 2-core CPU. Runs that differ only in their
seed, reruns, resumed runs and other shards on the same host compile the same
programs; JAX's persistent cache keeps the executables on disk, keyed by the
program, the JAX/XLA versions and the device, and a hit loads one instead of
compiling it (MobileNetV2's full train step at 64 px: 17 s -> 3 s of tracing
and loading). It holds programs, not results: a hit runs the same executable.

`TUNING_XLA_CACHE=DIR` moves it (default ~/.cache/tuning/xla), `off` turns it off.
"""
from __future__ import annotations

import os

import jax

DEFAULT = os.path.join("~", ".cache", "tuning", "xla")
MAX_BYTES = 4 * 2**30  # least recently used entries go beyond this


def enable() -> str | None:
  """Points JAX's persistent compilation cache at its directory; None when turned off."""
  location = os.environ.get("TUNING_XLA_CACHE", DEFAULT)
  if location == "off":
    return None
  location = os.path.expanduser(location)
  jax.config.update("jax_compilation_cache_dir", location)
  jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
  return location
