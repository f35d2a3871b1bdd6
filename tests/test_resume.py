"""Killed runs lose nothing: kill -9 mid-run, rerun the same command, get the same result."""
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax.numpy as jnp
import orbax.checkpoint as ocp
import pytest

from tuning import config as config_lib
from tuning import report, train

REPO = pathlib.Path(__file__).resolve().parents[1]
TUNING = pathlib.Path(sys.executable).parent / "tuning"
RUN = "pneumoniamnist-mobilenet_v2-from_conv_last-f0.1-s0"
OVERRIDES = ["--config.scheme=from:conv_last", "--config.image_size=32", "--config.train_fraction=0.1",
             "--config.epochs=3", "--config.patience=3", "--config.batch_size=16",
             "--config.progress=false"]


def command(workdir, *extra):
  return [str(TUNING), "train", "--config", str(REPO / "configs" / "demo.py"), *OVERRIDES, *extra,
          "--workdir", str(workdir)]


def env(shared_data_dir):
  return {**os.environ, "TUNING_DATA_DIR": str(shared_data_dir),
          "TUNING_WEIGHTS_DIR": str(shared_data_dir.parent / "weights")}


def finish(workdir, shared_data_dir, *extra):
  proc = subprocess.run(command(workdir, *extra), env=env(shared_data_dir), capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


def kill_when(workdir, shared_data_dir, path):
  """Starts a run and SIGKILLs it as soon as `path` (under the workdir) exists."""
  proc = subprocess.Popen(command(workdir), env=env(shared_data_dir),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.monotonic() + 300
  while not (workdir / path).exists():
    assert proc.poll() is None, "the run ended before it could be killed"
    assert time.monotonic() < deadline
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()


def comparable(row):
  return {k: v for k, v in row.items() if k not in ("wall_s", "resumed_at_epoch", "feature_cache_s")}


def test_killed_runs_resume_bit_identically_and_finished_runs_are_not_redone(
    tmp_path, shared_data_dir):
  reference = tmp_path / "uninterrupted"
  finish(reference, shared_data_dir)
  workdir = tmp_path / "killed"
  kill_when(workdir, shared_data_dir, f"checkpoints/{RUN}/latest/1")  # after epoch 1

  # A different config must not silently continue this run.
  refused = subprocess.run(command(workdir, "--config.lr=0.5"), env=env(shared_data_dir),
                           capture_output=True, text=True, timeout=600)
  assert refused.returncode != 0 and "Traceback" not in refused.stderr
  assert "differs in lr (checkpoint 0.001, now 0.5)" in refused.stderr

  kill_when(workdir, shared_data_dir, f"checkpoints/{RUN}/latest/2")  # resumed, killed again
  assert not (workdir / "results.jsonl").exists()
  finish(workdir, shared_data_dir)
  rows = report.read_results(str(workdir))
  assert len(rows) == 1 and rows[0]["resumed_at_epoch"] == 2
  assert comparable(rows[0]) == comparable(report.read_results(str(reference))[0])

  again = finish(workdir, shared_data_dir)
  assert "already in results, skipped" in again.stdout + again.stderr
  assert len(report.read_results(str(workdir))) == 1


def test_a_torn_last_line_is_skipped_and_the_next_row_starts_a_new_line(tmp_path):
  path = tmp_path / "results.jsonl"
  train.append_result(str(path), {"scheme": "head"})
  with open(path, "a") as f:
    f.write('{"scheme": "al')  # a crash mid-write
  train.append_result(str(path), {"scheme": "all"})
  with pytest.warns(UserWarning, match="results.jsonl:2: skipping"):
    rows = report.read_results(str(tmp_path))
  assert [r["scheme"] for r in rows] == ["head", "all"]
  assert json.loads(path.read_text().splitlines()[-1]) == {"scheme": "all"}


def test_a_diverging_run_is_recorded_not_crashed(tmp_path, shared_data_dir):
  proc = finish(tmp_path, shared_data_dir, "--config.lr=1e30", "--config.epochs=1")
  assert "diverged at epoch 1" in proc.stdout + proc.stderr
  (row,) = report.read_results(str(tmp_path))
  assert row["diverged_at_epoch"] == 1 and row["test_auc"] is None and row["best_epoch"] == 0
  assert "Diverged (non-finite loss" in (tmp_path / "report.md").read_text()


def test_resume_refuses_a_checkpoint_of_another_state_tree(tmp_path):
  """Same config, other model (e.g. after a library change): name a differing leaf."""
  config = config_lib.defaults()
  saved_state = {"params": {"head": {"kernel": jnp.zeros((4, 2))}}}
  latest = ocp.CheckpointManager(str(tmp_path), options=ocp.CheckpointManagerOptions(create=True))
  _, progress = train.resume(latest, saved_state, config)
  latest.save(1, args=ocp.args.Composite(state=ocp.args.StandardSave(saved_state),
                                         progress=ocp.args.JsonSave(progress)))
  latest.wait_until_finished()
  with pytest.raises(ValueError, match=r"another state tree.*\['params'\]\['head'\]\['kernel'\] "
                                       r"\(checkpoint \(4, 2\) float32, now \(5, 2\) float32\)"):
    train.resume(latest, {"params": {"head": {"kernel": jnp.zeros((5, 2))}}}, config)
  restored, saved = train.resume(latest, saved_state, config)
  assert saved["epoch"] == 0 and restored["params"]["head"]["kernel"].shape == (4, 2)
