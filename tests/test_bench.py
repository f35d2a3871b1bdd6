"""`tuning bench`: the rows, table and plot it writes, and the torch peer's freezing.

Behaviour only: timings depend on the machine and its load, so no speed is
asserted here (the measured numbers are in benchmarks/README.md).
"""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from benchmarks import common, harness, pipeline, torch_peer
from tuning import models
from tuning.datasets import medmnist

TUNING = pathlib.Path(sys.executable).parent / "tuning"
SCHEMES = ["forward", "head", "from:layer4"]  # `all` would compile 2-3 s longer
EVERY_ROW = ("framework", "model", "scheme", "batch", "size", "img_per_s", "img_per_s_min",
             "img_per_s_max", "img_per_s_runs", "flops_per_img", "gflops_achieved", "matmul_peak_gflops",
             "peak_rss_mb", "minor_faults_per_step", "trainable_params", "devices", "threads", "jax_version",
             "torch_version", "platform", "cpu_count", "date")
JAX_ROW = ("compile_s", "xla_temp_mb", "device_kind")
TINY = {"batch": 4, "size": 32, "repeats": 1, "steps": 1}  # with mobilenet_v1_0.25: quick to compile


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
  """The console script, started before `bench` so that the two overlap."""
  out = tmp_path_factory.mktemp("cli")
  proc = subprocess.Popen(
      [str(TUNING), "bench", "--models", "resnet18", "--batch", "2", "--size", "32",
       "--schemes", "forward", "--repeats", "1", "--steps", "1", "--no-torch", "--out", str(out)],
      env={**os.environ, "JAX_PLATFORMS": "cpu"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True)
  yield out, proc
  proc.kill()


@pytest.fixture(scope="module")
def bench(tmp_path_factory, cli):
  del cli  # only started first
  out = tmp_path_factory.mktemp("bench")
  rows = harness.run(["resnet18"], SCHEMES, batch=4, size=32, out=str(out), repeats=1, steps=1)
  return out, rows


def by_scheme(rows, framework):
  return {r["scheme"]: r for r in rows if r["framework"] == framework}


def test_jsonl_holds_every_row_with_the_required_fields(bench):
  out, rows = bench
  written = [json.loads(line) for line in (out / "bench.jsonl").read_text().splitlines()]
  assert written == rows
  for row in rows:
    missing = [k for k in EVERY_ROW + (JAX_ROW if row["framework"] == "jax" else ())
               if row.get(k) is None]
    assert not missing, (row["framework"], row["scheme"], missing)
    assert row["img_per_s_min"] <= row["img_per_s"] <= row["img_per_s_max"]


def test_both_frameworks_measure_every_scheme_on_the_same_parameters(bench):
  _, rows = bench
  jax_rows, torch_rows = by_scheme(rows, "jax"), by_scheme(rows, "torch")
  assert list(jax_rows) == list(torch_rows) == SCHEMES
  for scheme in SCHEMES:
    assert jax_rows[scheme]["trainable_params"] == torch_rows[scheme]["trainable_params"]
  assert jax_rows["forward"]["trainable_params"] == 0
  assert all(row["timed_in_turns"] for row in rows)  # side by side: timed runs alternate
  assert 0 < jax_rows["head"]["trainable_params"] < jax_rows["from:layer4"]["trainable_params"]


def test_flops_grow_with_depth(bench):
  """A head-only step is the forward pass plus the head's backward; deeper adds layer4's."""
  flops = {s: r["flops_per_img"] for s, r in by_scheme(bench[1], "jax").items()}
  assert 0 < flops["forward"] <= flops["head"] < flops["from:layer4"]


def test_markdown_has_a_ratio_for_every_scheme(bench):
  out, _ = bench
  text = (out / "bench.md").read_text()
  assert "scaling" not in text  # one device count: no scaling table
  lines = text.splitlines()
  header = next(line for line in lines if line.startswith("| model"))
  ratio = [c.strip() for c in header.split("|")].index("JAX/torch")
  body = [line.split("|") for line in lines if line.startswith("| resnet18")]
  assert [cells[2].strip() for cells in body] == SCHEMES
  assert all(float(cells[ratio].split()[0]) > 0 for cells in body)


def test_ratio_pairs_runs_timed_in_turns():
  jax_row = {"img_per_s": 100.0, "img_per_s_runs": [100.0, 50.0, 120.0], "timed_in_turns": True}
  torch_row = {"img_per_s": 100.0, "img_per_s_runs": [200.0, 100.0, 150.0],
               "timed_in_turns": True}
  # Paired: 0.5, 0.5, 0.8; the medians' ratio would say 1.00.
  assert harness.ratio_cell(jax_row, torch_row) == "0.50 (0.50–0.80)"
  apart = {**jax_row, "timed_in_turns": False}
  assert harness.ratio_cell(apart, torch_row) == "1.00"
  assert harness.ratio_cell(jax_row, None) == "—"


def test_plot_is_a_png(bench):
  assert (bench[0] / "bench.png").read_bytes().startswith(b"\x89PNG")


def test_cli_runs_end_to_end(cli):
  out, proc = cli
  stdout, stderr = proc.communicate(timeout=300)
  assert proc.returncode == 0, stderr
  assert "| resnet18 | forward |" in stdout
  rows = [json.loads(line) for line in (out / "bench.jsonl").read_text().splitlines()]
  assert [(r["framework"], r["scheme"]) for r in rows] == [("jax", "forward")]  # --no-torch
  assert (out / "bench.png").is_file()


def test_cli_rejects_a_scheme_no_model_has(capsys, tmp_path):
  with pytest.raises(SystemExit) as exit_:
    harness.main(["--models", "resnet18", "--schemes", "head,from:block7", "--out", str(tmp_path)])
  assert exit_.value.code == 2
  error = capsys.readouterr().err
  assert error.startswith("error: --schemes: 'from:block7'") and "from:layer3" in error
  assert not (tmp_path / "bench.jsonl").exists()


def test_default_schemes_are_every_block_boundary():
  blocks = type(models.create("resnet18", 1)).block_names
  assert common.scheme_names(blocks) == [
      "forward", "head", "head+clip", "from:layer4", "from:layer3", "from:layer2", "from:layer1",
      "all"]


@pytest.mark.parametrize("arch", sorted(torch_peer.ARCHITECTURES))
def test_torch_peer_has_the_same_blocks_and_parameters(arch):
  model = models.create(arch, 10)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
  reference = torch_peer.create(arch, 10)
  assert tuple(name for name, _ in reference.named_children()) == type(model).block_names
  for name, block in reference.named_children():
    want = sum(x.size for x in jax.tree.leaves(shapes["params"][name]))
    assert sum(p.numel() for p in block.parameters()) == want, name


def test_torch_peer_step_trains_only_above_the_boundary():
  """Frozen blocks get no gradient and keep their BatchNorm running stats; the rest train."""
  torch.manual_seed(0)
  model = torch_peer.create("resnet18", 10)
  before = {k: v.clone() for k, v in model.state_dict().items()}
  trainable_from = type(models.create("resnet18", 1)).block_names.index("layer4")
  torch_peer.make_train_step(model, trainable_from)(torch.randn(2, 3, 32, 32), torch.tensor([1, 7]))
  for name, param in model.named_parameters():
    trains = name.startswith(("layer4.", "head."))
    assert param.requires_grad == trains and (param.grad is not None) == trains, name
  after = model.state_dict()
  for key in before:
    if key.endswith(("running_mean", "running_var")) or key.startswith("head."):
      assert torch.equal(before[key], after[key]) != key.startswith(("layer4.", "head.")), key


def test_devices_measure_each_count_and_add_a_scaling_table(tmp_path):
  """JAX rows at 1 and 2 devices (fake CPU ones, each count in its own process)."""
  rows = harness.run(["mobilenet_v1_0.25"], ["head"], out=str(tmp_path), with_torch=False,
                     devices=[2, 1], **TINY)
  assert [(r["scheme"], r["devices"]) for r in rows] == [("head", 1), ("head", 2)]
  assert [json.loads(line) for line in (tmp_path / "bench.jsonl").read_text().splitlines()] == rows
  for row in rows:
    assert not [k for k in EVERY_ROW + JAX_ROW if k != "torch_version" and row.get(k) is None]
  # XLA counts one device's program: per image, the partitioned step is the same work.
  assert rows[1]["flops_per_img"] == pytest.approx(rows[0]["flops_per_img"], rel=0.25)
  text = (tmp_path / "bench.md").read_text()
  assert text.count("| mobilenet_v1_0.25 | head |") == 2  # the main table at 1 device, scaling
  header, _, line = [[cell.strip() for cell in l.split("|")[1:-1]] for l in
                     text.split("## Data-parallel scaling")[1].splitlines() if l.startswith("|")]
  assert header == ["model", "scheme", "img/s, 1 device", "img/s, 2 devices",
                    "speed-up, 2 devices vs 1"]
  assert float(line[4]) == pytest.approx(rows[1]["img_per_s"] / rows[0]["img_per_s"], abs=0.01)


def test_host_device_flags_replace_an_earlier_count_and_keep_other_flags():
  flags = common.host_device_flags(
      "--xla_force_host_platform_device_count=8 --xla_cpu_use_thunk_runtime=false", 2)
  assert flags.split() == ["--xla_cpu_use_thunk_runtime=false",
                           "--xla_force_host_platform_device_count=2"]
  assert common.host_device_flags("", 4) == "--xla_force_host_platform_device_count=4"


def _pneumonia_like(directory):
  """A tiny file in PneumoniaMNIST's layout, under its name: 16 gray images per split."""
  rng = np.random.default_rng(0)
  np.savez(directory / "pneumoniamnist.npz", **{
      f"{split}_{key}": value for split in medmnist.SPLITS for key, value in (
          ("images", rng.integers(0, 256, (16, 28, 28), np.uint8)),
          ("labels", (np.arange(16) % 2).astype(np.uint8)[:, None]))})


def test_pipeline_measures_each_step_resident_and_fed(tmp_path, monkeypatch):
  data, out = tmp_path / "data", tmp_path / "out"
  data.mkdir()
  _pneumonia_like(data)
  monkeypatch.setenv("TUNING_DATA_DIR", str(data))  # the measuring process inherits it
  rows = pipeline.run(["mobilenet_v1_0.25"], ["head"], augment="hflip", out=str(out), **TINY)
  assert [(r["scheme"], r["fed"]) for r in rows] == [("head", "resident"), ("head", "pipeline")]
  assert [json.loads(line) for line in (out / "pipeline.jsonl").read_text().splitlines()] == rows
  for row in rows:
    assert not [k for k in EVERY_ROW + JAX_ROW if k != "torch_version" and row.get(k) is None]
    assert row["n_train"] == 16 and row["augment"] == "hflip"
    assert row["trainable_params"] == 256 * 2 + 2  # the head of PneumoniaMNIST's 2 classes
  assert rows[1]["pipeline_alone_img_per_s"] > 0
  line = next(l for l in (out / "pipeline.md").read_text().splitlines()
              if l.startswith("| mobilenet_v1_0.25 | head |"))
  ratio = float(line.split("|")[6])
  assert ratio == pytest.approx(rows[1]["img_per_s"] / rows[0]["img_per_s"], abs=0.01)


@pytest.mark.parametrize("args, fragments", [
    (["--batch", "6", "--devices", "2,4"], ["--batch 6", "--devices 4", "divisible"]),
    (["--devices", "2", "--pipeline"], ["--devices", "--pipeline"]),
    (["--pipeline", "--schemes", "forward,head"], ["--pipeline --schemes", "'forward'"]),
    (["--pipeline"], ["--pipeline", "pneumoniamnist.npz not found", "TUNING_DATA_DIR"]),
    (["--pipeline", "--augment", "hflip,blur"], ["--augment", "'blur'"]),
])
def test_cli_refuses(args, fragments, capsys, tmp_path, monkeypatch):
  monkeypatch.setenv("TUNING_DATA_DIR", str(tmp_path / "empty"))
  with pytest.raises(SystemExit) as exit_:
    harness.main(["--models", "mobilenet_v1_0.25", "--out", str(tmp_path), *args])
  assert exit_.value.code == 2
  error = capsys.readouterr().err
  assert error.startswith("error: ") and all(f in error for f in fragments), error
  assert not list(tmp_path.glob("*.jsonl"))


def test_cli_refuses_more_devices_than_an_accelerator_has(capsys, tmp_path, monkeypatch):
  """On GPU/TPU the devices are real: a count above theirs is an error, before measuring."""
  monkeypatch.setattr(harness, "in_fresh_process", lambda fn, *args, **kwargs: ("gpu", 2))
  with pytest.raises(SystemExit) as exit_:
    harness.main(["--models", "mobilenet_v1_0.25", "--devices", "1,4", "--out", str(tmp_path)])
  assert exit_.value.code == 2
  error = capsys.readouterr().err
  assert "--devices 4" in error and "2 gpu device(s)" in error, error
