"""Sweep bookkeeping: each run once, across processes sharing a workdir."""
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
    row = {**{k: run_config[k] for k in sweep.RUN_KEY}, "test_auc": 0.5, "test_acc": 0.5,
           "diverged_at_epoch": None, "wall_s": 1.0}
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
