"""`tuning train|sweep|convert`: a user's mistake is one `error:` line, never a traceback.

Each case runs the installed console script as the user would. The cases
start together in one fixture, since each process spends ~1.5 s importing JAX.
No case reaches training, and a proxy on a closed port makes every download
fail at once, so nothing touches the network.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import subprocess
import sys

import pytest

from tuning.convert import converted

TUNING = pathlib.Path(sys.executable).parent / "tuning"
DEMO = pathlib.Path(__file__).resolve().parents[1] / "configs" / "demo.py"
REFUSED = "http://127.0.0.1:9"  # the discard port: connections are refused immediately

# name -> (command line after `tuning`, data dir: "shared" or "empty")
_RUN = "--config {demo} --workdir {workdir}"
CASES = {
    "unknown_dataset": (f"train {_RUN} --config.dataset=nosuchmnist", "shared"),
    "bad_scheme": (f"train {_RUN} --config.scheme=from:block99", "shared"),
    "unknown_key": (f"train {_RUN} --config.epoch=3", "shared"),
    "bad_value": (f"train {_RUN} --config.epochs=three", "shared"),
    "missing_weights": (f"train {_RUN} --config.weights=/nonexistent.pth", "shared"),
    "download_fails": (f"train {_RUN}", "empty"),
    "wrong_arch_weights": (f"train {_RUN} --config.arch=resnet18 --config.scheme=head "
                           "--config.schemes=('head',) --config.weights={mobilenet}", "shared"),
    "fraction_too_small": (f"train {_RUN} --config.dataset=retinamnist --config.train_fraction=0.001",
                           "shared"),
    "convert": ("convert --from torchvision --arch mobilenet_v2 {mobilenet} {workdir}/out", "shared"),
    "convert_wrong_arch": ("convert --from torchvision --arch resnet18 {mobilenet} {workdir}/out",
                           "shared"),
    "convert_without_from": ("convert --arch mobilenet_v2 {mobilenet} {workdir}/out", "shared"),
    "convert_unknown_format": ("convert --from caffe --arch alexnet {mobilenet} {workdir}/out",
                               "shared"),
    "no_workdir": ("train --config {demo}", "shared"),
    "no_command": (_RUN, "shared"),
    "unknown_command": (f"evaluate {_RUN}", "shared"),
}


@dataclasses.dataclass
class Run:
  returncode: int
  stdout: str
  stderr: str
  workdir: pathlib.Path

  def error_lines(self) -> list[str]:
    return [line for line in self.stderr.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shared_data_dir) -> dict[str, Run]:
  root = tmp_path_factory.mktemp("cli")
  (root / "empty").mkdir()
  env = {k: v for k, v in os.environ.items()
         if k not in ("TUNING_DEBUG", "no_proxy", "NO_PROXY", "TUNING_DATA_DIR")}
  env.update({"https_proxy": REFUSED, "HTTPS_PROXY": REFUSED, "http_proxy": REFUSED,
              "HTTP_PROXY": REFUSED, "JAX_PLATFORMS": "cpu",
              "TUNING_WEIGHTS_DIR": str(root / "empty"), "XDG_CACHE_HOME": str(root / "cache")})
  procs = {}
  for name, (command_line, data) in CASES.items():
    workdir = root / name
    mobilenet = shared_data_dir.parent / "weights" / "mobilenet_v2-b0353104.pth"
    argv = [arg.format(demo=DEMO, workdir=workdir, mobilenet=mobilenet)
            for arg in command_line.split()]
    data_dir = shared_data_dir if data == "shared" else root / "empty"
    procs[name] = (workdir, subprocess.Popen(
        [str(TUNING), *argv], env={**env, "TUNING_DATA_DIR": str(data_dir)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  results = {}
  for name, (workdir, proc) in procs.items():
    stdout, stderr = proc.communicate(timeout=300)
    results[name] = Run(proc.returncode, stdout, stderr, workdir)
  return results


def _check_user_error(run: Run, returncode: int, *culprits: str) -> str:
  """The shared contract; returns the error text (with its continuation lines)."""
  assert run.returncode == returncode, run.stderr
  assert "Traceback" not in run.stderr, run.stderr
  assert len(run.error_lines()) == 1, run.stderr
  assert not run.stdout, run.stdout
  assert not (run.workdir / "results.jsonl").exists()
  error = run.stderr[run.stderr.index("error:"):]
  for culprit in culprits:
    assert culprit in error, f"{culprit!r} not in {error!r}"
  return error


def test_console_script_is_installed():
  assert TUNING.is_file(), f"{TUNING} missing; pip install -e . creates it"


def test_unknown_dataset_is_named(runs):
  _check_user_error(runs["unknown_dataset"], 1, "nosuchmnist.npz", "TUNING_DATA_DIR")


def test_unknown_dataset_lists_what_is_there(runs):
  _check_user_error(runs["unknown_dataset"], 1, "pneumoniamnist", "retinamnist")


def test_bad_scheme_lists_the_valid(runs):
  _check_user_error(runs["bad_scheme"], 1, "config.scheme: unknown scheme 'from:block99'",
                    "from:block7", "scratch")


def test_unknown_key_override_suggests_the_closest(runs):
  """The override is accepted by the flag parser and rejected by `config.validate`."""
  _check_user_error(runs["unknown_key"], 1, "unknown config key 'epoch' (did you mean 'epochs'?)")


def test_unparsable_override_is_named(runs):
  _check_user_error(runs["bad_value"], 2, "--config.epochs=three", "int")


def test_missing_weights_file_is_named(runs):
  _check_user_error(runs["missing_weights"], 1, "/nonexistent.pth", "config.weights")


def test_failed_dataset_download_is_a_clean_error(runs):
  """The RuntimeError of a failed MedMNIST download names the file and what to do."""
  error = _check_user_error(runs["download_fails"], 1, "pneumoniamnist.npz", "TUNING_DATA_DIR",
                            "zenodo.org")
  assert str(runs["download_fails"].workdir.parent / "empty" / "pneumoniamnist.npz") in error


def test_weights_of_another_architecture_are_refused_naming_the_keys(runs):
  _check_user_error(runs["wrong_arch_weights"], 1, "mobilenet_v2-b0353104.pth",
                    "does not fit torchvision resnet18", "missing conv1.weight")


def test_a_fraction_leaving_fewer_images_than_a_batch_is_named(runs):
  _check_user_error(runs["fraction_too_small"], 1, "config.train_fraction = 0.001 leaves 5",
                    "config.batch_size = 32")


def test_missing_workdir(runs):
  _check_user_error(runs["no_workdir"], 2, "--workdir")


@pytest.mark.parametrize("case", ["no_command", "unknown_command"])
def test_missing_or_unknown_command_prints_usage(runs, case):
  run = runs[case]
  assert run.returncode == 2, run.stderr
  assert "Traceback" not in run.stderr
  assert "usage: tuning {train,sweep}" in run.stderr
  assert not (run.workdir / "results.jsonl").exists()


def test_convert_writes_weights_a_config_can_name(runs):
  run = runs["convert"]
  assert run.returncode == 0, run.stderr
  out = run.workdir / "out"
  assert f"--config.pretrained={out}" in run.stdout
  model, variables, preprocess = converted.load(out, arch="mobilenet_v2")
  assert model.num_classes == 1000 and preprocess.name == "torchvision"
  assert variables["params"]["stem"]["conv"]["kernel"].shape == (3, 3, 3, 32)


def test_convert_refuses_weights_of_another_arch(runs):
  _check_user_error(runs["convert_wrong_arch"], 1, "does not fit torchvision resnet18",
                    "missing conv1.weight")
  assert not (runs["convert_wrong_arch"].workdir / "out").exists()


def test_convert_needs_a_format(runs):
  _check_user_error(runs["convert_without_from"], 2, "--from", "tuning convert --from FORMAT")


def test_convert_names_the_known_formats(runs):
  _check_user_error(runs["convert_unknown_format"], 2, "caffe", "torchvision", "tflite")
