"""`tuning.pretrained`: finding a weights file and grafting it under a fresh head.

An import must be exact and loud: every block but the head is copied bit for
bit, and any difference between the trees fails with every problem listed.
"""
from __future__ import annotations

import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tuning.convert
from tuning import config as config_lib
from tuning import models, pretrained, train

MOBILENET_V2 = "mobilenet_v2-b0353104.pth"


@pytest.fixture(scope="module")
def shared_weights_dir() -> pathlib.Path:
  """The real weights: `$TUNING_WEIGHTS_DIR`, else `<repo>/../shared/weights`; fails if absent."""
  configured = os.environ.get("TUNING_WEIGHTS_DIR")
  path = (pathlib.Path(configured) if configured
          else pathlib.Path(__file__).resolve().parents[2] / "shared" / "weights")
  if not (path / MOBILENET_V2).is_file():
    pytest.fail(f"{path / MOBILENET_V2} does not exist; set TUNING_WEIGHTS_DIR to the "
                "directory holding torchvision's MobileNetV2 checkpoint")
  return path


def _variables(num_classes: int, seed: int) -> dict:
  """ResNet-18 variables at 32 px with the real tree structure, without compiling.

  `eval_shape` gives the structure; the values are seeded numpy noise so that
  two trees never agree by accident.
  """
  model = models.create("resnet18", num_classes)
  shapes = jax.eval_shape(lambda r: model.init(r, jnp.zeros((1, 32, 32, 3)), train=False),
                          jax.random.key(0))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(s.dtype), shapes)


def _leaves(tree) -> dict:
  return {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_transplant_copies_all_but_the_head_exactly():
  source, fresh = _variables(1000, seed=1), _variables(2, seed=2)
  out = pretrained.transplant(source, fresh)
  assert set(out) == {"params", "batch_stats"}
  for collection in out:
    assert set(out[collection]) == set(fresh[collection])
    for block, tree in out[collection].items():
      want = fresh if block == "head" else source
      got, expected = _leaves(tree), _leaves(want[collection][block])
      assert got.keys() == expected.keys(), (collection, block)
      for key in got:
        assert np.array_equal(got[key], expected[key]), f"{collection}/{block}{key}"
  assert out["params"]["head"]["classifier"]["kernel"].shape == (512, 2)
  # Sanity of the test itself: the two inputs really differ outside the head.
  assert not np.array_equal(source["params"]["stem"]["conv"]["conv"]["kernel"],
                            fresh["params"]["stem"]["conv"]["conv"]["kernel"])


def test_transplant_lists_every_difference_in_one_error():
  fresh = _variables(2, seed=2)
  source = jax.tree.map(lambda x: x, _variables(1000, seed=1))  # fresh dicts, safe to edit
  del source["params"]["layer1"]["unit0"]["conv1"]["bn"]["scale"]  # missing leaf
  source["params"]["layer2"]["unit0"]["conv1"]["conv"]["extra"] = np.zeros(3)  # unexpected leaf
  source["params"]["layer3"]["unit0"]["conv1"]["conv"]["kernel"] = np.zeros((3, 3, 128, 7))
  source["params"]["fc_old"] = {"kernel": np.zeros((512, 1000))}  # only in the pretrained tree
  del source["batch_stats"]["layer4"]  # only in the new model
  with pytest.raises(ValueError) as e:
    pretrained.transplant(source, fresh)
  message = str(e.value)
  assert "params/layer1/unit0/conv1/bn/scale: missing from the pretrained weights" in message
  assert "params/layer2/unit0/conv1/conv/extra: unexpected in the pretrained weights" in message
  assert ("params/layer3/unit0/conv1/conv/kernel: pretrained shape (3, 3, 128, 7), "
          "model expects (3, 3, 128, 256)") in message
  assert "params/fc_old: only in the pretrained model" in message
  assert "batch_stats/layer4: only in the new model" in message
  assert len(message.splitlines()) == 6  # the header and exactly these five


def test_transplant_ignores_a_mismatched_head():
  """The head is replaced, so its differing class count is no error, on hand-made trees too."""
  fresh = {"params": {"body": {"w": np.zeros((2, 3))}, "head": {"w": np.zeros((3, 2))}}}
  source = {"params": {"body": {"w": np.ones((2, 3))}, "head": {"w": np.ones((3, 1000))}}}
  out = pretrained.transplant(source, fresh)
  assert np.array_equal(out["params"]["body"]["w"], np.ones((2, 3)))
  assert np.array_equal(out["params"]["head"]["w"], np.zeros((3, 2)))


@pytest.fixture
def dirs(tmp_path, monkeypatch) -> dict[str, pathlib.Path]:
  """A weights dir for each source of the setting, and a cwd where no bare name exists."""
  made = {name: tmp_path / name for name in ("arg", "env", "xdg", "cwd")}
  for path in made.values():
    path.mkdir()
  (made["xdg"] / "tuning" / "weights").mkdir(parents=True)
  monkeypatch.chdir(made["cwd"])
  monkeypatch.setenv("TUNING_WEIGHTS_DIR", str(made["env"]))
  monkeypatch.setenv("XDG_CACHE_HOME", str(made["xdg"]))
  return made


@pytest.fixture
def fetches(monkeypatch) -> list:
  """Replaces the download with a recorder; these tests never touch the network."""
  calls = []
  def fake_fetch(url, dest_dir):
    calls.append((url, pathlib.Path(dest_dir)))
    return pathlib.Path(dest_dir) / url.rsplit("/", 1)[-1]
  monkeypatch.setattr(tuning.convert, "fetch", fake_fetch)
  return calls


def test_resolve_returns_an_existing_path(dirs, fetches):
  path = dirs["arg"] / "mine.pth"
  path.write_bytes(b"x")
  assert pretrained.resolve(str(path), str(dirs["env"])) == path
  assert not fetches


def test_resolve_looks_in_arg_then_env_then_cache(dirs, monkeypatch, fetches):
  xdg_weights = dirs["xdg"] / "tuning" / "weights"
  for folder in (dirs["arg"], dirs["env"], xdg_weights):
    (folder / "w.pth").write_bytes(b"x")
  assert pretrained.resolve("w.pth", str(dirs["arg"])) == dirs["arg"] / "w.pth"
  assert pretrained.resolve("w.pth", "") == dirs["env"] / "w.pth"
  monkeypatch.delenv("TUNING_WEIGHTS_DIR")
  assert pretrained.resolve("w.pth") == xdg_weights / "w.pth"
  assert not fetches


def test_resolve_missing_file_names_both_places_and_the_settings(dirs, fetches):
  with pytest.raises(FileNotFoundError) as e:
    pretrained.resolve("nosuch.pth", str(dirs["arg"]))
  message = str(e.value)
  assert "'nosuch.pth'" in message
  assert str(dirs["cwd"] / "nosuch.pth") in message
  assert str(dirs["arg"] / "nosuch.pth") in message
  for setting in ("config.weights", "config.weights_dir", "$TUNING_WEIGHTS_DIR"):
    assert setting in message
  assert not fetches  # not a torchvision file name: nothing to download


def test_resolve_downloads_a_missing_standard_file(dirs, fetches):
  path = pretrained.resolve("resnet18-f37072fd.pth", str(dirs["arg"]))
  assert fetches == [("https://download.pytorch.org/models/resnet18-f37072fd.pth", dirs["arg"])]
  assert path == dirs["arg"] / "resnet18-f37072fd.pth"


def test_resolve_downloads_a_missing_keras_application_file(dirs, fetches):
  name = "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"
  pretrained.resolve(name, str(dirs["arg"]))
  assert fetches == [(tuning.convert.KERAS_URLS["inception_v3_notop"], dirs["arg"])]


def test_resolve_without_download_raises_for_a_standard_file(dirs, fetches):
  with pytest.raises(FileNotFoundError, match="resnet18-f37072fd.pth"):
    pretrained.resolve("resnet18-f37072fd.pth", str(dirs["arg"]), download=False)
  assert not fetches


def test_resolve_failed_download_names_the_file_and_url(dirs, monkeypatch):
  """Offline, the user needs to know where to put the file, not just 'connection refused'."""
  def failing_fetch(url, dest_dir):
    raise OSError("connection refused")
  monkeypatch.setattr(tuning.convert, "fetch", failing_fetch)
  with pytest.raises(FileNotFoundError) as e:
    pretrained.resolve("resnet18-f37072fd.pth", str(dirs["arg"]))
  message = str(e.value)
  assert str(dirs["arg"] / "resnet18-f37072fd.pth") in message
  assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in message
  assert "connection refused" in message


def test_load_unknown_format_lists_the_valid(tmp_path):
  with pytest.raises(ValueError) as e:
    pretrained.load("mobilenet_v2", tmp_path / "w.onnx", "onnx")
  message = str(e.value)
  assert "'onnx'" in message and "'torchvision'" in message and "'tflite'" in message


@pytest.fixture(scope="module")
def mobilenet(shared_weights_dir):
  """The converted checkpoint and `create_model`'s trees for `head` and `scratch`.

  `unsafe_rbg` keys: the init jit compiles 2x faster than with threefry on CPU.
  """
  config = config_lib.defaults()
  config.weights_dir = str(shared_weights_dir)
  config.image_size = 32
  _, converted, _ = pretrained.load(
      "mobilenet_v2", shared_weights_dir / MOBILENET_V2, "torchvision")
  made = {}
  for scheme in ("head", "scratch"):
    config.scheme = scheme
    _, variables, _, _ = train.create_model(config, 2, jax.random.key(0, impl="unsafe_rbg"))
    made[scheme] = variables
  return converted, made


def test_create_model_transplants_the_real_checkpoint(mobilenet):
  converted, made = mobilenet
  variables = made["head"]
  assert variables["params"]["head"]["classifier"]["kernel"].shape == (1280, 2)
  assert set(variables) == set(converted) == {"params", "batch_stats"}
  compared = 0
  for collection, blocks in variables.items():
    assert set(blocks) == set(converted[collection])
    for block in blocks:
      if block == "head":
        continue
      got, want = _leaves(blocks[block]), _leaves(converted[collection][block])
      assert got.keys() == want.keys()
      for key in got:
        assert np.array_equal(got[key], want[key]), f"{collection}/{block}{key}"
        compared += 1
  assert compared > 200  # every conv and BatchNorm leaf of stem..conv_last


def test_scratch_has_the_same_tree_but_fresh_values(mobilenet):
  converted, made = mobilenet
  scratch = made["scratch"]
  assert jax.tree.structure(scratch) == jax.tree.structure(made["head"])
  assert jax.tree.map(np.shape, scratch) == jax.tree.map(np.shape, made["head"])
  kernels = {k: v for k, v in _leaves(scratch["params"]).items()
             if k.endswith("['kernel']") and "['head']" not in k}
  assert len(kernels) > 50
  converted_leaves = _leaves(converted["params"])
  for key, value in kernels.items():
    assert not np.array_equal(value, converted_leaves[key]), key
