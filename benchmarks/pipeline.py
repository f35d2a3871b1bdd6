"""`tuning bench --pipeline`: does the input pipeline keep the train step fed?

Each depth scheme's train step, built as `tuning bench` builds it (harness.jax_rows),
runs in `tuning train`'s loop (each batch `jax.device_put` onto the data sharding, then
the donated step; the host waits on the previous step's loss, so one step is in flight),
timed twice in one process: on one resident batch, and fed by the real input pipeline,
`tuning.input_pipeline.train_batches` over the training split of the training config's
dataset (PneumoniaMNIST, from $TUNING_DATA_DIR), resized to `--size` and augmented on the
fly with `--augment`. pipeline / resident img/s below 1 is time the step waited on the
host. The pipeline alone (batches made and put on the devices, no step) is timed after
them, to say whether it could keep up at all.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Iterator, Sequence

import jax
import ml_collections

from benchmarks import common, harness
from tuning import augment as augment_lib
from tuning import config as config_lib
from tuning import datasets, input_pipeline, models, preprocess, train
from tuning.datasets import medmnist

JSONL, MARKDOWN = "pipeline.jsonl", "pipeline.md"
NOT_FED = (common.FORWARD, common.HEAD_CACHED)  # no image batches: evaluation, cached features
# The convention of the torchvision weights `--sweep` fine-tunes (the weights are random
# here); every convention costs the same arithmetic.
PREPROCESS = preprocess.TORCHVISION


@dataclasses.dataclass(frozen=True)
class Feed:
  """Training batches as `tuning train` makes them; picklable, the data loaded where used."""
  batch: int
  size: int
  augment: str = ""

  def config(self) -> ml_collections.ConfigDict:
    config = config_lib.defaults()
    config.update(batch_size=self.batch, image_size=self.size, augment=self.augment)
    return config

  @functools.cached_property
  def _data(self) -> tuple[medmnist.Dataset, medmnist.Split, augment_lib.Augment | None]:
    dataset = datasets.from_config(self.config())
    return dataset, *augment_lib.from_config(dataset.train, self.config())

  @property
  def num_classes(self) -> int:
    return self._data[0].num_classes

  def batches(self) -> Iterator[dict]:
    """A new iterator over the shuffled training batches, epoch after epoch."""
    _, split, augmentation = self._data
    return iter(input_pipeline.train_batches(
        split, batch_size=self.batch, image_size=self.size, preprocess=PREPROCESS,
        seed=self.config().seed, augment=augmentation))


def missing_data() -> str | None:
  """Why the training config's dataset cannot be read here, or None."""
  config = config_lib.defaults()
  directory = medmnist.data_dir(config.data_dir)
  if config.dataset in medmnist.available(directory):
    return None
  return (f"{directory / config.dataset}.npz not found; set $TUNING_DATA_DIR to the folder "
          f"holding {config.dataset}.npz")


def run(archs: Sequence[str], schemes: Sequence[str] | None, *, batch: int, size: int,
        augment: str, repeats: int, steps: int, out: str) -> list[dict]:
  """Measures every model's train steps resident and fed, one process per model.

  `schemes`: train steps on images (none of `NOT_FED`); None: every depth. Writes
  `out/pipeline.jsonl` (one row per measurement, rewritten) and `out/pipeline.md`.
  """
  os.makedirs(out, exist_ok=True)
  path = os.path.join(out, JSONL)
  if os.path.exists(path):
    os.remove(path)
  feed = Feed(batch, size, augment)
  dataset = datasets.from_config(feed.config())
  settings = {"batch": batch, "size": size, "repeats": repeats, "steps": steps}
  context = {"jax_version": jax.__version__, "dataset": dataset.name,
             "data_sha256": dataset.sha256, "n_train": len(dataset.train.labels),
             "source_size": dataset.train.images.shape[1], "augment": augment,
             "preprocess": PREPROCESS.name, "repeats": repeats, "steps": steps,
             **common.machine()}
  rows = []
  for arch in archs:
    names = schemes or [n for n in common.scheme_names(type(models.create(arch, 1)).block_names)
                        if n not in NOT_FED]
    for row in harness.in_fresh_process(harness.measure, "jax", arch, names,
                                        {**settings, "feed": feed}):
      row.update(context)
      train.append_result(path, row)
      rows.append(row)
  write_markdown(rows, os.path.join(out, MARKDOWN))
  return rows


def table(rows: Sequence[dict]) -> str:
  """One line per model and scheme: resident and fed img/s, their ratio, the pipeline alone."""
  lines = ["| model | scheme | trainable params | resident img/s (min–max) "
           "| pipeline img/s (min–max) | pipeline / resident | pipeline alone img/s |",
           "|" + "---|" * 7]
  for model, scheme in dict.fromkeys((r["model"], r["scheme"]) for r in rows):
    fed = {r["fed"]: r for r in rows if (r["model"], r["scheme"]) == (model, scheme)}
    resident, piped = fed["resident"], fed["pipeline"]
    lines.append("| " + " | ".join([
        model, scheme, f"{resident['trainable_params']:,}", harness.speed_cell(resident),
        harness.speed_cell(piped), f"{piped['img_per_s'] / resident['img_per_s']:.2f}",
        f"{piped['pipeline_alone_img_per_s']:.1f}"]) + " |")
  return "\n".join(lines)


def write_markdown(rows: Sequence[dict], path: str) -> None:
  first = rows[0]
  common.write_report(
      path, "tuning bench --pipeline", rows,
      f", {first['devices']} {first['device_kind']} device(s), jax {first['jax_version']}. "
      f"{first['n_train']:,} training images of {first['dataset']} ({first['source_size']} px) "
      f"resized to {first['size']} px, batch {first['batch']}, augment "
      f"{first['augment'] or 'none'}, {first['preprocess']} preprocess, random weights. img/s "
      f"is the median (min–max) of {first['repeats']} timed runs of {first['steps']} steps "
      f"after {common.WARMUP_STEPS} warm-up steps, in `tuning train`'s loop (one step in "
      "flight); `pipeline alone` puts batches on the device with no step running.", table(rows))
