"""The product end to end: the CLI sweeps real chest X-rays with real ImageNet weights."""
import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
TUNING = pathlib.Path(sys.executable).parent / "tuning"
FIELDS = {"dataset", "arch", "scheme", "train_fraction", "seed", "test_auc", "test_acc",
          "best_epoch", "wall_s", "n_trainable_params"}
TINY = ["--config.image_size=32", "--config.train_fraction=0.05", "--config.epochs=2",
        "--config.batch_size=16", "--config.progress=false"]


def run(args, shared_data_dir, devices=1):
  env = {**os.environ, "TUNING_DATA_DIR": str(shared_data_dir),
         "TUNING_WEIGHTS_DIR": str(shared_data_dir.parent / "weights"),
         "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
  command, *overrides = args  # config_flags wants --config before its overrides
  proc = subprocess.run([str(TUNING), command, "--config", str(REPO / "configs" / "demo.py"), *TINY,
                         *overrides],
                        env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


def rows(workdir):
  return [json.loads(line) for line in (workdir / "results.jsonl").read_text().splitlines()]


def test_sweep_on_real_data_writes_results_and_report_and_resumes(tmp_path, shared_data_dir):
  schemes = "--config.schemes=('scratch','head','from:block7','all')"
  run(["sweep", "--workdir", str(tmp_path), schemes], shared_data_dir)
  results = rows(tmp_path)
  assert [r["scheme"] for r in results] == ["scratch", "head", "from:block7", "all"]
  for r in results:
    assert FIELDS <= set(r), FIELDS - set(r)
    assert r["dataset"] == "pneumoniamnist" and r["arch"] == "mobilenet_v2"
    assert r["config"]["scheme"] == r["scheme"] and r["config"]["image_size"] == 32
    assert {"jax", "flax", "optax", "python"} <= set(r["versions"])
    assert len(r["data_sha256"]) == 64
    assert 0.0 <= r["test_auc"] <= 1.0 and 1 <= r["best_epoch"] <= 2
    # val_auc is recomputed from the restored orbax checkpoint: it must be the best epoch's.
    assert r["val_auc"] == max(h["val_auc"] for h in r["history"])
    assert r["val_auc"] == r["history"][r["best_epoch"] - 1]["val_auc"]
  trainable = {r["scheme"]: r["n_trainable_params"] for r in results}
  assert trainable["head"] == 1280 * 2 + 2
  assert trainable["head"] < trainable["from:block7"] < trainable["all"] == trainable["scratch"]
  report = (tmp_path / "report.md").read_text()
  for scheme in trainable:
    assert f"| {scheme} |" in report
  assert (tmp_path / "checkpoints").is_dir()

  again = run(["sweep", "--workdir", str(tmp_path), schemes], shared_data_dir)
  assert (again.stdout + again.stderr).count("already in results, skipped") == 4
  assert len(rows(tmp_path)) == 4


def test_train_shards_the_batch_over_devices_with_the_same_result(tmp_path, shared_data_dir):
  """BatchNorm statistics and the loss are over the global batch, so 4 devices
  compute what 1 does, up to float reassociation."""
  results = {}
  for devices in (1, 4):
    workdir = tmp_path / str(devices)
    run(["train", "--workdir", str(workdir), "--config.scheme=from:conv_last"],
        shared_data_dir, devices)
    results[devices] = rows(workdir)[0]
  assert results[4]["devices"] == 4 and results[1]["devices"] == 1
  assert results[4]["test_auc"] == pytest.approx(results[1]["test_auc"], abs=2e-3)
  assert results[4]["history"][0]["train_loss"] == pytest.approx(
      results[1]["history"][0]["train_loss"], rel=1e-3)
