"""`tuning bench`: train-step throughput per model and depth scheme, JAX beside PyTorch.

Each JAX step is built exactly as training builds it (`tuning.train.make_train_step`
over `tuning.schedule.make_optimizer`, state replicated and batch sharded over every
device, state donated) from random weights, and runs on one device-resident random
batch, so the numbers are the step's alone, without the input pipeline. `DIR/bench.jsonl`
gets one row per measurement, `DIR/bench.md` the table with the JAX/torch ratio,
`DIR/bench.png` images/s against depth. `--devices 1,2,4` measures the JAX rows once
per device count, data-parallel, and adds a scaling table. `--sweep` measures whole
depth sweeps of real training runs instead (benchmarks/sweep_cost.py), `--pipeline`
the step fed by the real input pipeline (benchmarks/pipeline.py).
"""
from __future__ import annotations

import argparse
import datetime
import functools
import os
import statistics
import sys
import time
from typing import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from matplotlib.figure import Figure

from benchmarks import common, pipeline, sweep_cost, turns
from tuning import allocator
from tuning import augment as augment_lib
from tuning import config as config_lib
from tuning import depth, models, schedule, train

NUM_CLASSES = 1000  # ImageNet's head: the step the pretrained models are benchmarked with
JSONL, MARKDOWN, PLOT = "bench.jsonl", "bench.md", "bench.png"


def matmul_peak_gflops(n: int = 2048) -> float:
  """Jitted JAX's float32 matmul rate: the machine's practical peak for the GFLOP/s columns."""
  a, b = map(jax.device_put, np.random.default_rng(0).standard_normal((2, n, n), np.float32))
  matmul = jax.jit(jnp.matmul)
  return common.matmul_gflops(lambda: matmul(a, b).block_until_ready(), n)


def xla_flops(compiled) -> float | None:
  """XLA's flop count of a compiled function (a dict, or in older JAX a list of dicts)."""
  cost = compiled.cost_analysis()
  costs = cost if isinstance(cost, (list, tuple)) else [cost]
  flops = [c.get("flops") for c in costs if c]
  return sum(flops) if flops and None not in flops else None


def _runner(compiled, state, arg, threads_state: bool) -> Callable[[int], None]:
  """`run_steps` for `common.images_per_second`; a train step threads its donated state."""
  def run_steps(k: int) -> None:
    nonlocal state
    for _ in range(k):
      out = compiled(state, arg)
      if threads_state:
        state = out[0]
    jax.block_until_ready(out)
  return run_steps


def _training_loop(compiled, state, next_batch: Callable[[], dict]) -> Callable[[int], None]:
  """`run_steps` as `tuning train`'s loop runs them: each step on `next_batch()`, the host
  waiting on the previous step's loss once the next is dispatched (one step in flight)."""
  def run_steps(k: int) -> None:
    nonlocal state
    previous = None
    for _ in range(k):
      state, metrics = compiled(state, next_batch())
      if previous is not None:
        float(previous)
      previous = metrics["loss"]
    jax.block_until_ready(state)
  return run_steps


def _put_batches(batches: Iterator[dict], sharding) -> Callable[[int], None]:
  """`run_steps` that only take k batches from the pipeline onto the devices: its own rate."""
  def run_steps(k: int) -> None:
    jax.block_until_ready([jax.device_put(next(batches), sharding) for _ in range(k)])
  return run_steps


def jax_rows(arch: str, schemes: list[common.Scheme], *, batch: int, size: int, repeats: int,
             steps: int, devices: int | None = None, feed: pipeline.Feed | None = None,
             between: Callable[[], None] = common.no_pause) -> Iterator[dict]:
  """One row per scheme, each step compiled ahead of time to time the compile alone.

  `devices`: the mesh spans the first that many devices (None: all), the batch
  split across them. `feed`: real training data; each (train) scheme is then
  measured twice in `tuning train`'s loop, on one resident batch of it and fed by
  its input pipeline (the row's `fed`), and the pipeline alone is timed beside.
  `between`: called before each timed run (`common.images_per_second`).
  """
  model = models.create(arch, feed.num_classes if feed else NUM_CLASSES)
  block_names = type(model).block_names
  # `unsafe_rbg`: random weights like any other, and an init that compiles 3-4x faster.
  variables = jax.jit(lambda r: model.init(r, jnp.zeros((1, size, size, 3)), train=False))(
      jax.random.key(0, impl="unsafe_rbg"))
  available = jax.devices()
  if devices is not None and devices > len(available):
    raise ValueError(f"{devices} devices asked for, {len(available)} available: {available}")
  mesh = Mesh(np.asarray(available[:devices]), ("data",))
  replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  rng = np.random.default_rng(0)
  data = jax.device_put(next(feed.batches()) if feed else {
      "image": rng.normal(size=(batch, size, size, 3)).astype(np.float32),
      "label": rng.integers(0, NUM_CLASSES, batch, dtype=np.int32)}, sharded)
  config = config_lib.defaults()
  peak = matmul_peak_gflops()
  for scheme in schemes:
    scope = common.reset_peak_rss()
    if scheme.trainable_from is None:
      step, arg, trainable = jax.jit(train.make_eval_step(model)), data["image"], 0
      state = {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
      fresh_state = lambda state=state: jax.device_put(state, replicated)
    else:
      mults = schedule.multipliers(variables["params"], block_names, scheme.trainable_from,
                                   head_lr_mult=config.head_lr_mult)
      tx = schedule.make_optimizer(
          mults, learning_rate=config.lr, momentum=config.momentum, steps_per_epoch=100,
          decay_per_epoch=config.lr_decay_per_epoch)
      if scheme.clip_norm is not None:
        tx = optax.chain(optax.clip_by_global_norm(scheme.clip_norm), tx)
      cached_from = scheme.trainable_from if scheme.cached else 0
      step = jax.jit(functools.partial(
          train.make_train_step(model, tx, scheme.trainable_from, start=cached_from),
          rng=jax.random.key(1)), donate_argnums=0)
      # Copied, since the donated step consumes its state; in one jit, not op by op
      # (eagerly, every parameter shape would compile its own small program).
      copy = jax.jit(lambda v, tx=tx: train.create_train_state(jax.tree.map(jnp.copy, v), tx))
      fresh_state = lambda copy=copy: jax.device_put(copy(variables), replicated)
      arg, trainable = data, schedule.count_trainable(variables["params"], mults)
      if cached_from:  # the frozen blocks' output on the batch, as the feature cache holds it
        trunk = jax.jit(lambda v, x, k=cached_from: model.apply(v, x, stop=k))
        arg = {**data, "image": trunk(variables, data["image"])}
    state = fresh_state()
    start = time.perf_counter()
    compiled = step.lower(state, arg).compile()
    compile_s = time.perf_counter() - start
    flops = xla_flops(compiled)
    # XLA counts one device's program, which sees batch / devices images.
    flops_per_img = None if flops is None else flops * mesh.size / batch
    memory = compiled.memory_analysis()

    def row(speed: dict, **fields) -> dict:
      return {
          "framework": "jax", "model": arch, "scheme": scheme.name, "batch": batch, "size": size,
          **fields, **speed, "trainable_params": trainable, "compile_s": compile_s,
          "flops_per_img": flops_per_img,
          "gflops_achieved": None if flops is None else flops_per_img * speed["img_per_s"] / 1e9,
          "matmul_peak_gflops": peak, "peak_rss_mb": common.peak_rss_mb(),
          "peak_rss_scope": scope,
          "xla_temp_mb": None if memory is None else memory.temp_size_in_bytes / 2**20,
          "threads": common.cores(), "devices": mesh.size,
          "device_kind": mesh.devices.flat[0].device_kind}

    if feed is None:
      yield row(common.images_per_second(
          _runner(compiled, state, arg, scheme.trainable_from is not None), batch, repeats, steps,
          between))
      continue
    yield row(common.images_per_second(_training_loop(compiled, state, lambda: arg), batch,
                                       repeats, steps, between), fed="resident")
    batches = feed.batches()  # only now, so that no pipeline ran while the resident batch did
    fed = common.images_per_second(_training_loop(
        compiled, fresh_state(), lambda: jax.device_put(next(batches), sharded)),
                                   batch, repeats, steps, between)
    alone = common.images_per_second(_put_batches(batches, sharded), batch, repeats, steps,
                                     between)
    yield row(fed, fed="pipeline", pipeline_alone_img_per_s=alone["img_per_s"])


def measure(framework: str, arch: str, schemes: Sequence[str] | None, settings: dict,
            between: Callable[[], None] = common.no_pause) -> list[dict]:
  """One framework's rows for one model, each stamped with the time and load it ran at.
  `between`: called before each timed run (benchmarks/turns.py)."""
  keeps_freed = allocator.keep_freed_memory()  # a fresh process: as `tuning train` runs
  chosen = common.schemes(type(models.create(arch, NUM_CLASSES)).block_names, schemes)
  if framework == "jax":
    produced = jax_rows(arch, chosen, **settings, between=between)
  else:
    from benchmarks import torch_peer  # pylint: disable=import-outside-toplevel  (optional)
    produced = torch_peer.rows(arch, chosen, num_classes=NUM_CLASSES, **settings,
                               between=between)
  rows = []
  for row in produced:
    row.update(loadavg_1m=os.getloadavg()[0], malloc_keeps_freed=keeps_freed,
               date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"))
    where = (f" on {_devices(row['devices'])}" if "devices" in settings else "") + (
        f" fed by {row['fed']}" if "fed" in row else "")
    print(f"{framework:>5} {arch} {row['scheme']}{where}: {row['img_per_s']:.1f} img/s",
          file=sys.stderr, flush=True)
    rows.append(row)
  return rows


def _call(fn: Callable, *args, between: Callable[[], None]):
  del between  # one process alone: no one to give turns to
  return fn(*args)


def in_fresh_process(fn: Callable, *args, environ: dict[str, str] | None = None):
  """`fn(*args)` in a new interpreter, so that no measurement shares a process with another
  framework or model: their memory peaks and thread pools stay apart. `environ` is set
  there first, before JAX starts its backend (which reads XLA_FLAGS then, once)."""
  return turns.in_turns([(_call, (fn, *args), environ or {})])[0]


def _backend() -> tuple[str, int]:
  return jax.default_backend(), jax.device_count()


def device_platform(counts: Sequence[int]) -> str:
  """The platform the JAX rows run on, asked of a fresh process (here, an accelerator's
  backend would keep its memory from the measurements); ValueError if it has fewer than
  `max(counts)` devices. On CPU any count goes: XLA splits the host into that many."""
  platform, available = in_fresh_process(_backend)
  if platform != "cpu" and max(counts) > available:
    raise ValueError(f"--devices {max(counts)}: this machine has {available} {platform} "
                     f"device(s); expected counts up to {available}")
  return platform


def run(archs: Sequence[str], schemes: Sequence[str] | None, *, batch: int, size: int, out: str,
        repeats: int, steps: int, with_torch: bool = True, devices: Sequence[int] | None = None,
        platform: str | None = None) -> list[dict]:
  """Measures every model and scheme in JAX and torch; writes bench.{jsonl,md,png} to `out`.

  Each framework and model runs in its own process (`measure`). A model's torch
  rows are measured in turns with its JAX rows at the fewest devices, the ones they
  are compared with: the two processes alternate timed runs (benchmarks/turns.py),
  so that drift of the machine's speed falls on both alike. Torch rows carry
  XLA's flop count of the same step (`flops_per_img`; the arithmetic is the same)
  and with it their GFLOP/s.
  `schemes`: names as `common.scheme_names` gives them; None is all of them.
  `devices`: device counts to measure the JAX rows at, data-parallel, each count in
  processes of its own (on CPU fake devices, set by XLA_FLAGS there), `batch` the
  global batch, divisible by each; `platform`: `device_platform(devices)`, asked when
  None. Without `devices`, the JAX rows run once, on every device.
  Returns the rows; bench.jsonl is rewritten, one line per measurement.
  """
  os.makedirs(out, exist_ok=True)
  path = os.path.join(out, JSONL)
  if os.path.exists(path):
    os.remove(path)
  notes, torch_peer = [], None
  if with_torch:
    try:
      from benchmarks import torch_peer  # pylint: disable=import-outside-toplevel  (optional)
    except ImportError as e:
      notes.append(f"No torch rows: {e} (pip install torch).")
  settings = {"batch": batch, "size": size, "repeats": repeats, "steps": steps}
  context = {"jax_version": jax.__version__,
             "torch_version": torch_peer.torch.__version__ if torch_peer else None,
             **settings, **common.machine()}
  if devices and platform is None:
    platform = device_platform(devices)
  counts = sorted(set(devices)) if devices else [None]
  rows = []
  for arch in archs:
    jax_calls = []
    for count in counts:
      environ = {"XLA_FLAGS": common.host_device_flags(os.environ.get("XLA_FLAGS", ""), count)
                 } if count and platform == "cpu" else {}
      counted = settings if count is None else {**settings, "devices": count}
      jax_calls.append((measure, ("jax", arch, schemes, counted), environ))
    with_peer = torch_peer is not None and arch in torch_peer.ARCHITECTURES
    if torch_peer is not None and not with_peer:
      notes.append(f"No torch peer for {arch} yet.")
    if with_peer:
      fewest, torch_rows = turns.in_turns(
          [jax_calls[0], (measure, ("torch", arch, schemes, settings), {})])
    else:
      fewest, torch_rows = turns.in_turns(jax_calls[:1])[0], []
    others = [row for call in jax_calls[1:] for row in turns.in_turns([call])[0]]
    flops = {row["scheme"]: row["flops_per_img"] for row in fewest}
    for row in torch_rows:
      per_img = flops.get(row["scheme"])
      row.update(flops_per_img=per_img, gflops_achieved=None if per_img is None
                 else per_img * row["img_per_s"] / 1e9)
    for row in fewest + torch_rows:
      row["timed_in_turns"] = with_peer  # its timed runs alternated with the other framework's
    for row in others:
      row["timed_in_turns"] = False
    for row in fewest + others + torch_rows:
      row.update(context)
      train.append_result(path, row)
      rows.append(row)
  write_markdown(rows, os.path.join(out, MARKDOWN), notes)
  plot(_at_fewest_devices(rows), os.path.join(out, PLOT))
  return rows


def _by_key(rows: Sequence[dict]) -> dict[tuple[str, str, str], dict]:
  return {(r["framework"], r["model"], r["scheme"]): r for r in rows}


def _at_fewest_devices(rows: Sequence[dict]) -> list[dict]:
  """The torch rows and the JAX rows at the fewest devices: one row per framework and scheme."""
  fewest = min((r["devices"] for r in rows if r["framework"] == "jax"), default=None)
  return [r for r in rows if r["framework"] != "jax" or r["devices"] == fewest]


def _devices(n: int) -> str:
  return f"{n} device{'s' if n > 1 else ''}"


def speed_cell(row: dict | None) -> str:
  if row is None:
    return "—"
  return f"{row['img_per_s']:.1f} ({row['img_per_s_min']:.1f}–{row['img_per_s_max']:.1f})"


def ratio_cell(jax_row: dict | None, torch_row: dict | None) -> str:
  """JAX's img/s over torch's. Timed in turns, the k-th runs of both lie side by side: the
  median (min–max) of their paired ratios, which drift of the machine's speed cancels from;
  otherwise the ratio of the medians."""
  if not (jax_row and torch_row):
    return "—"
  runs = jax_row.get("img_per_s_runs"), torch_row.get("img_per_s_runs")
  if jax_row.get("timed_in_turns") and torch_row.get("timed_in_turns") and runs[0] and (
      len(runs[0]) == len(runs[1])):
    paired = [j / t for j, t in zip(*runs)]
    return f"{statistics.median(paired):.2f} ({min(paired):.2f}–{max(paired):.2f})"
  return f"{jax_row['img_per_s'] / torch_row['img_per_s']:.2f}"


def _num(value: float | None, fmt: str) -> str:
  return "—" if value is None else fmt.format(value)


def table(rows: Sequence[dict]) -> str:
  """One line per (model, scheme): both frameworks side by side and their ratio."""
  by_key = _by_key(rows)
  lines = ["| model | scheme | trainable params | JAX img/s (min–max) | torch img/s (min–max) "
           "| JAX/torch | JAX compile s | GFLOP/img | JAX GFLOP/s (% of peak) "
           "| peak RSS MB JAX / torch | page faults/step JAX / torch |", "|" + "---|" * 11]
  for model, scheme in dict.fromkeys((r["model"], r["scheme"]) for r in rows):
    jax_row, torch_row = by_key.get(("jax", model, scheme)), by_key.get(("torch", model, scheme))
    any_row = jax_row or torch_row
    achieved = "—"
    if jax_row and jax_row["gflops_achieved"] is not None:
      achieved = (f"{jax_row['gflops_achieved']:.1f} "
                  f"({100 * jax_row['gflops_achieved'] / jax_row['matmul_peak_gflops']:.0f} %)")
    lines.append("| " + " | ".join([
        model, scheme, f"{any_row['trainable_params']:,}", speed_cell(jax_row),
        speed_cell(torch_row), ratio_cell(jax_row, torch_row),
        _num(jax_row and jax_row["compile_s"], "{:.1f}"),
        _num(any_row["flops_per_img"] and any_row["flops_per_img"] / 1e9, "{:.3f}"), achieved,
        " / ".join(_num(r and r["peak_rss_mb"], "{:.0f}") for r in (jax_row, torch_row)),
        " / ".join(_num(r and r["minor_faults_per_step"], "{:,.0f}") for r in (jax_row, torch_row)),
    ]) + " |")
  return "\n".join(lines)


def versus_forward(rows: Sequence[dict]) -> list[str]:
  """Per model: head-only (head+clip, head-cached) throughput as a fraction of forward-only."""
  by_key = _by_key(rows)
  lines = []
  for model in dict.fromkeys(r["model"] for r in rows):
    parts = []
    for scheme in ("head", common.HEAD_CLIP, common.HEAD_CACHED):
      ratios = [f"{name} {by_key[(fw, model, scheme)]['img_per_s'] / forward['img_per_s']:.2f}"
                for fw, name in (("jax", "JAX"), ("torch", "torch"))
                if (forward := by_key.get((fw, model, common.FORWARD)))
                and (fw, model, scheme) in by_key]
      if ratios:
        parts.append(f"`{scheme}` {', '.join(ratios)}")
    if parts:
      lines.append(f"- {model}, img/s as a fraction of `forward`: {'; '.join(parts)}")
  return lines


def scaling(rows: Sequence[dict]) -> list[str]:
  """Data-parallel scaling, when the JAX rows ran at several device counts: per model and
  scheme, img/s at each count and the speed-up over the fewest; else nothing."""
  measured = [r for r in rows if r["framework"] == "jax"]
  counts = sorted({r["devices"] for r in measured})
  if len(counts) < 2:
    return []
  by_count = {(r["model"], r["scheme"], r["devices"]): r for r in measured}
  lines = [
      "## Data-parallel scaling", "",
      f"JAX rows at {', '.join(map(str, counts))} {measured[0]['device_kind']} devices, each "
      f"count in processes of its own: state replicated, the global batch of "
      f"{measured[0]['batch']} split across the devices."
      + (f" These are fake devices (`--xla_force_host_platform_device_count`) sharing the same "
         f"{measured[0]['cores_used']} cores: no hardware is added, so this measures what "
         "partitioning the step costs, and a speed-up is cores one device left idle."
         if measured[0]["device_kind"] == "cpu" else ""), "",
      "| model | scheme | " + " | ".join(f"img/s, {_devices(n)}" for n in counts) + " | "
      + " | ".join(f"speed-up, {_devices(n)} vs {counts[0]}" for n in counts[1:]) + " |",
      "|" + "---|" * (1 + 2 * len(counts))]
  for model, scheme in dict.fromkeys((r["model"], r["scheme"]) for r in measured):
    speeds = [by_count.get((model, scheme, n)) for n in counts]
    base = speeds[0]
    lines.append("| " + " | ".join([model, scheme, *map(speed_cell, speeds), *(
        _num(r and base and r["img_per_s"] / base["img_per_s"], "{:.2f}") for r in speeds[1:])])
                 + " |")
  return lines


def write_markdown(rows: Sequence[dict], path: str, notes: Sequence[str] = ()) -> None:
  """The bench table at the fewest devices, and the scaling table when several were measured."""
  shown = _at_fewest_devices(rows)
  first = shown[0]
  peaks = {r["framework"]: r["matmul_peak_gflops"] for r in shown}
  versions = ", ".join(f"{name} {first[f'{name}_version']}" for name in ("jax", "torch")
                       if first[f"{name}_version"])
  setup = (
      f" used (XLA's thread pool; torch threads set to match), {versions}. Batch {first['batch']}, "
      f"{first['size']}x{first['size']} px, {NUM_CLASSES} classes, random weights; img/s is the "
      f"median (min–max) of {first['repeats']} timed runs of {first['steps']} steps after "
      f"{common.WARMUP_STEPS} warm-up steps"
      + ("; JAX's and torch's timed runs alternate, one process at a time (benchmarks/turns.py), "
         "and JAX/torch is the median (min–max) of the ratios of paired runs"
         if any(r.get("timed_in_turns") for r in shown) else "")
      + ". float32 2048² matmul peak: " + ", ".join(
          f"{'JAX' if fw == 'jax' else fw} {gflops:.0f} GFLOP/s" for fw, gflops in peaks.items())
      + ".")
  scaled = scaling(rows)
  common.write_report(path, "tuning bench", rows, setup, table(shown), "",
                      *versus_forward(shown), *(["", *notes] if notes else []),
                      *(["", *scaled] if scaled else []))


def plot(rows: Sequence[dict], path: str) -> None:
  """img/s against trainable depth (head .. all), one panel per model, one line per framework.

  forward-only throughput is a dashed line of the framework's colour; head+clip and
  head-cached are left to the table.
  """
  archs = list(dict.fromkeys(r["model"] for r in rows))
  figure = Figure(figsize=(5 * len(archs), 4), layout="constrained")
  for axes, arch in zip(np.atleast_1d(figure.subplots(1, len(archs))), archs):
    blocks = type(models.create(arch, NUM_CLASSES)).block_names
    measured = common.schemes(blocks, [r["scheme"] for r in rows])
    depth_of = {s.name: s.trainable_from for s in measured
                if s.trainable_from is not None and s.clip_norm is None and not s.cached}
    for framework, color in (("jax", "tab:blue"), ("torch", "tab:orange")):
      mine = [r for r in rows if r["model"] == arch and r["framework"] == framework]
      depths = sorted((r for r in mine if r["scheme"] in depth_of),
                      key=lambda r: -depth_of[r["scheme"]])
      if depths:
        axes.plot([r["scheme"] for r in depths], [r["img_per_s"] for r in depths], "o-",
                  color=color, label=framework)
      for r in mine:
        if r["scheme"] == common.FORWARD:
          axes.axhline(r["img_per_s"], color=color, linestyle="--", label=f"{framework} forward")
    axes.set(title=f"{arch}, batch {rows[0]['batch']}, {rows[0]['size']} px",
             ylabel="images/s", yscale="log")
    axes.tick_params(axis="x", labelrotation=45)
    axes.legend(fontsize="small")
  figure.savefig(path, dpi=100)


class _Parser(argparse.ArgumentParser):
  """A bad flag is one `error:` line and exit code 2, like `tuning train`."""

  def error(self, message: str):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def _names(text: str) -> list[str]:
  return [name for name in text.split(",") if name]


def _positive(text: str) -> int:
  value = int(text)
  if value < 1:
    raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
  return value


def _counts(text: str) -> list[int]:
  return sorted({_positive(name) for name in _names(text)})


def main(argv: Sequence[str]) -> int:
  parser = _Parser(prog="tuning bench", description=__doc__.splitlines()[0])
  parser.add_argument("--models", type=_names, default="mobilenet_v2,resnet18",
                      help="comma-separated architectures (default: %(default)s)")
  parser.add_argument("--schemes", type=_names, default=None,
                      help="comma-separated: forward, head, head+clip, head-cached, "
                           "from:<block>, all (default: all of them but head-cached, every block "
                           "boundary); with --sweep: training schemes, scratch and all included")
  parser.add_argument("--batch", type=_positive, default=32)
  parser.add_argument("--size", type=_positive, default=96, help="image side in pixels, >= 32")
  parser.add_argument("--repeats", type=_positive, default=5, help="timed runs per measurement")
  parser.add_argument("--steps", type=_positive, default=3, help="steps per timed run")
  parser.add_argument("--out", required=True, help="directory for bench.{jsonl,md,png}")
  parser.add_argument("--no-torch", action="store_true", help="JAX rows only")
  parser.add_argument("--sweep", action="store_true",
                      help="instead: the wall time of a whole depth sweep of real training runs "
                           "(benchmarks/sweep_cost.py), with and without the feature cache, "
                           "against one full fine-tune; writes sweep.{jsonl,md}")
  parser.add_argument("--epochs", type=_positive, default=3, help="--sweep: epochs per run")
  parser.add_argument("--train-fraction", type=float, default=0.25,
                      help="--sweep: fraction of the training split (default: %(default)s)")
  parser.add_argument("--devices", type=_counts, default=None,
                      help="comma-separated device counts, e.g. 1,2,4: the JAX rows once per "
                           "count, data-parallel (on CPU fake devices sharing its cores), "
                           "--batch the global batch; adds a scaling table")
  parser.add_argument("--pipeline", action="store_true",
                      help="instead: each train step fed by the real input pipeline "
                           "(PneumoniaMNIST from $TUNING_DATA_DIR) against one resident batch "
                           "(benchmarks/pipeline.py); writes pipeline.{jsonl,md}")
  parser.add_argument("--augment", default="",
                      help="--pipeline: comma list of tuning/augment.py OPS, on the fly")
  args = parser.parse_args(argv)
  unknown = [arch for arch in args.models if arch not in models.ARCHITECTURES]
  if unknown or not args.models:
    parser.error(f"--models: unknown {unknown}; expected some of {sorted(models.ARCHITECTURES)}")
  if args.size < 32:
    parser.error(f"--size {args.size}: expected >= 32 (the networks downsample 32x)")
  if args.sweep and args.pipeline:
    parser.error("--sweep, --pipeline: expected one of them")
  if args.devices and (args.sweep or args.pipeline):
    parser.error("--devices: measures the train step alone, not with --sweep or --pipeline")
  if args.augment and not args.pipeline:
    parser.error("--augment: only with --pipeline")
  for count in args.devices or ():
    if args.batch % count:
      parser.error(f"--batch {args.batch} is not divisible by --devices {count}: the global "
                   "batch is split evenly across the devices")
  if args.sweep:
    missing = [arch for arch in args.models if not sweep_cost.has_weights(arch)]
    if missing:
      parser.error(f"--sweep: no torchvision weights for {missing} to fine-tune")
    if not 0 < args.train_fraction <= 1:
      parser.error(f"--train-fraction {args.train_fraction}: expected a fraction in (0, 1]")
    if args.schemes is not None:
      if "all" not in args.schemes:
        parser.error("--sweep --schemes: include `all`, the full fine-tune the sweep is compared to")
      for arch in args.models:
        for name in args.schemes:
          try:
            depth.parse_scheme(name, type(models.create(arch, 1)).block_names)
          except ValueError as e:
            parser.error(f"--sweep --schemes: {arch}: {e}")
    sweep_cost.run(args.models, args.schemes, size=args.size, batch=args.batch,
                   epochs=args.epochs, train_fraction=args.train_fraction, out=args.out)
    with open(os.path.join(args.out, sweep_cost.MARKDOWN), encoding="utf-8") as f:
      print(f.read())
    return 0
  if args.schemes is not None:
    blocks = [type(models.create(arch, NUM_CLASSES)).block_names for arch in args.models]
    for name in args.schemes:
      if not any(common.applies(name, b) for b in blocks):
        parser.error(f"--schemes: {name!r} applies to none of {args.models}; expected one of "
                     + ", ".join(dict.fromkeys(n for b in blocks for n in common.scheme_names(b))))
  if args.pipeline:
    unfed = [name for name in args.schemes or () if name in pipeline.NOT_FED]
    if unfed:
      parser.error(f"--pipeline --schemes: {unfed} take no image batches; expected train steps "
                   "(head, head+clip, from:<block>, all)")
    try:
      augment_lib.parse(args.augment)
    except ValueError as e:
      parser.error(f"--augment: {e}")
    if problem := pipeline.missing_data():
      parser.error(f"--pipeline: {problem}")
    pipeline.run(args.models, args.schemes, batch=args.batch, size=args.size,
                 augment=args.augment, repeats=args.repeats, steps=args.steps, out=args.out)
    with open(os.path.join(args.out, pipeline.MARKDOWN), encoding="utf-8") as f:
      print(f.read())
    return 0
  platform = None
  if args.devices:
    try:
      platform = device_platform(args.devices)
    except ValueError as e:
      parser.error(str(e))
  run(args.models, args.schemes, batch=args.batch, size=args.size, out=args.out,
      repeats=args.repeats, steps=args.steps, with_torch=not args.no_torch, devices=args.devices,
      platform=platform)
  with open(os.path.join(args.out, MARKDOWN), encoding="utf-8") as f:
    print(f.read())
  return 0
