"""Sweep bookkeeping: each run once, across processes sharing a workdir."""
import json
import subprocess
import sys
import textwrap

from tuning import config as config_lib
from tuning import report, sweep, train


def hold_lock_in_another_process(workdir, name):
  """A child process that takes the run's lock and keeps it until killed."""
  code = textwrap.dedent(f"""
      import sys, time
      from tuning import sweep
      with sweep.run_lock({str(workdir)!r}, {name!r}) as mine:
        print(mine, flush=True)
        time.sleep(600)
  """)
  child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
  assert child.stdout.readline().strip() == "True"
  return child


def test_a_run_locked_by_another_process_is_skipped_and_others_run(tmp_path, monkeypatch):
  config = config_lib.defaults()
  config.schemes = ("head", "all")
  config.progress = False
  trained = []
  def fake_train(run_config, workdir):
    trained.append(run_config.scheme)
    row = {"scheme": run_config.scheme, "config": json.loads(run_config.to_json()),
           "test_auc": 0.5, "test_acc": 0.5, "diverged_at_epoch": None, "wall_s": 1.0}
    train.append_result(f"{workdir}/results.jsonl", row)
    return row
  monkeypatch.setattr(train, "train_and_evaluate", fake_train)
  monkeypatch.setattr(report, "write_report", lambda workdir: None)
  locked = config.copy_and_resolve_references()
  locked.scheme = "head"
  child = hold_lock_in_another_process(tmp_path, train.run_name(locked))
  try:
    sweep.run_sweep(config, str(tmp_path))
    assert trained == ["all"]
  finally:
    child.kill()
    child.wait()
  # Its holder gone, the run is free; the finished one is not redone.
  sweep.run_sweep(config, str(tmp_path))
  assert trained == ["all", "head"]
  assert sorted(r["scheme"] for r in report.read_results(str(tmp_path))) == ["all", "head"]


def test_a_run_is_the_same_run_whatever_grid_it_was_part_of():
  config = config_lib.defaults()
  config.scheme = "head"
  other = config.copy_and_resolve_references()
  other.schemes, other.seeds, other.progress, other.data_dir = ("head",), (0, 1), False, "/elsewhere"
  assert sweep.run_key(config) == sweep.run_key(other)
  assert sweep.run_key(config) == sweep.run_key(json.loads(other.to_json()))  # as a row holds it
  for key, value in (("lr", 0.5), ("balance", True), ("image_size", 96), ("seed", 1)):
    changed = config.copy_and_resolve_references()
    changed[key] = value
    assert sweep.run_key(changed) != sweep.run_key(config), key


def test_the_grid_crosses_archs_each_with_the_schemes_naming_its_blocks():
  config = config_lib.defaults()
  config.archs = (("mobilenet_v2", "mobilenet_v2-b0353104.pth", "torchvision"),
                  ("resnet18", "", "torchvision"))
  config.schemes = ("scratch", "head", "from:block4", "from:layer3", "all")
  config.seeds = (0, 1)
  config_lib.validate(config)
  runs = sweep.grid(config)
  got = [(r.seed, r.arch, r.weights, r.scheme) for r in runs]
  want = [(seed, arch, weights, scheme)
          for seed in (0, 1)
          for arch, weights, own in (("mobilenet_v2", "mobilenet_v2-b0353104.pth", "from:block4"),
                                     ("resnet18", "", "from:layer3"))
          for scheme in ("scratch", "head", own, "all")]
  assert got == want
  for run in runs:
    config_lib.validate(run)  # as run_all does: each run's schemes fit its arch
  assert len({sweep.run_key(r) for r in runs}) == len(runs)
  assert len({train.run_name(r) for r in runs}) == len(runs)
