"""Keras weight files convert exactly: parity with Keras 3 models, every file layout, key checks.

The references are `keras.applications` models built in the test on Keras's
JAX backend (no TensorFlow), with random weights, saved in Keras's own formats
and converted without Keras.
"""
from __future__ import annotations

import contextlib
import os
import shutil

import chex
import h5py
import jax
import numpy as np
import pytest

import test_vgg
from test_vgg import _NARROW
from tuning.convert import ConversionError, from_keras
from tuning.models import vgg
from tuning.preprocess import KERAS_CAFFE, MINUS_ONE_TO_ONE, TORCHVISION

os.environ["KERAS_BACKEND"] = "jax"
keras = pytest.importorskip("keras", reason="Keras 3 parity references: pip install -e '.[parity]'")
legacy_h5_format = pytest.importorskip("keras.src.legacy.saving.legacy_h5_format",
                                       reason="Keras 3 writes legacy .h5 weights with it")
keras_efficientnet = pytest.importorskip("keras.src.applications.efficientnet",
                                         reason="its ImageNet stddev and weights download")

narrow = test_vgg.narrow  # a fixture: `vgg16`/`vgg19` with fc6/fc7 `_NARROW` wide
# Keras's variables warn on every conversion to numpy (keras/src/backend/jax/core.py).
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")


@contextlib.contextmanager
def _zero_kernels():
  """Keras models built inside start with zero kernels, for `_randomize` to replace.

  Keras draws its initial kernels with one XLA compilation per kernel shape,
  which takes a minute for InceptionV3 on this CPU. Its Glorot and He
  initialisers (EfficientNet's own too) are all `VarianceScaling`s.
  """
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(keras.initializers.VarianceScaling, "__call__",
                  lambda self, shape, dtype=None: np.zeros(shape, "float32"))
    yield


def _build(application, **kwargs):
  """A `keras.applications` model with weights from `_randomize`."""
  with _zero_kernels():
    model = application(weights=None, **kwargs)
  _randomize(model)
  return model


def _randomize(model, seed=0):
  """Random weights everywhere, the BatchNorm moving statistics too.

  Keras starts them at mean 0 and variance 1, which would hide a mix-up of the two.
  Kernels keep the scale of their inputs (He's), a depthwise kernel (k, k, C, 1)
  having fan-in k*k: at C times less, MobileNetV2's signal would vanish.
  EfficientNet's input `Normalization` gets the statistics of pixels in [0, 1]
  (and keeps its own copy of them, made by `finalize_state`).
  """
  rng = np.random.default_rng(seed)
  depthwise = {layer.kernel.path for layer in model.layers
               if isinstance(layer, keras.layers.DepthwiseConv2D)}
  fan_in = lambda v: np.prod(v.shape[:2] if v.path in depthwise else v.shape[:-1])
  draw = {"kernel": lambda v: rng.normal(0, np.sqrt(2 / fan_in(v)), v.shape),
          "bias": lambda v: rng.normal(0, 0.1, v.shape),
          "gamma": lambda v: rng.uniform(0.5, 1.5, v.shape),
          "beta": lambda v: rng.normal(0, 0.2, v.shape),
          "moving_mean": lambda v: rng.normal(0, 0.2, v.shape),
          "moving_variance": lambda v: rng.uniform(0.5, 2.0, v.shape),
          "mean": lambda v: rng.uniform(0.3, 0.6, v.shape),
          "variance": lambda v: rng.uniform(0.03, 0.1, v.shape),
          "count": lambda v: np.zeros(v.shape)}
  model.set_weights([draw[v.name](v).astype(v.dtype) for v in model.weights])
  for layer in model.layers:
    if isinstance(layer, keras.layers.Normalization):
      layer.finalize_state()


def _save_legacy(model, path):
  """The layout of keras.applications' downloads: `layer_names` at the root.

  Keras 3's `save_weights` no longer writes it, but its legacy saver does.
  """
  with h5py.File(path, "w") as f:
    legacy_h5_format.save_weights_to_hdf5_group(f, model)
  return path


def _images(height, width, seed=1):
  return np.random.default_rng(seed).normal(size=(2, height, width, 3)).astype(np.float32)


def _pixels(height, width, seed=1):
  """uint8 RGB images, for models that normalise their input themselves."""
  return np.random.default_rng(seed).integers(0, 256, size=(2, height, width, 3), dtype=np.uint8)


# XLA's optimisations take most of the compile time of these one-off forward
# passes (DenseNet-121's: 6 s of 8) and change nothing beyond float rounding.
_QUICK_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _run_once(f, *args):
  return np.asarray(jax.jit(f).lower(*args).compile(_QUICK_COMPILE)(*args))


def _logits(model, variables, images):
  return _run_once(model.apply, variables, images)


def _keras_logits(reference, inputs):
  """`reference.predict(inputs)`, compiled as `_logits` is."""
  return _run_once(lambda trainable, other, x: reference.stateless_call(
      trainable, other, x, training=False)[0],
      [v.value for v in reference.trainable_variables],
      [v.value for v in reference.non_trainable_variables], inputs)


def _assert_close(name, got, want):
  print(f"{name}: max |logit diff| = {np.abs(got - want).max():.2e}, "
        f"max |logit| = {np.abs(want).max():.1f}")
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)


@pytest.fixture(scope="module")
def inception(tmp_path_factory):
  """Keras's InceptionV3 at its smallest input (75 px), 7 classes, saved in every layout."""
  reference = _build(keras.applications.InceptionV3, input_shape=(75, 75, 3), classes=7,
                     classifier_activation=None)
  directory = tmp_path_factory.mktemp("inception_v3")
  paths = {"legacy": _save_legacy(reference, directory / "weights.h5"),
           "model": directory / "model.h5",  # a whole model: weights under `model_weights`
           "keras3": directory / "model.weights.h5"}
  reference.save(paths["model"])
  reference.save_weights(paths["keras3"])
  return reference, paths, from_keras("inception_v3", paths["legacy"])


def test_inception_v3_logits_match_keras(inception):
  reference, _, (model, variables, preprocess) = inception
  assert model.num_classes == 7 and preprocess == MINUS_ONE_TO_ONE
  images = _images(75, 75)
  _assert_close("inception_v3", _logits(model, variables, images),
                _keras_logits(reference, images))
  # Keras counts the BatchNorm moving statistics too.
  assert sum(np.size(v) for v in jax.tree.leaves(variables)) == reference.count_params()


@pytest.mark.parametrize("layout", ["model", "keras3"])
def test_every_file_layout_gives_the_same_variables(inception, layout):
  _, paths, (_, want, _) = inception
  _, got, _ = from_keras("inception_v3", paths[layout])
  chex.assert_trees_all_equal(got, want)


def test_notop_file_gives_every_block_but_the_head(inception, tmp_path):
  """A notop model built later in the session: Keras numbers its layers on from the first's."""
  reference, _, (_, full, _) = inception
  notop = _build(keras.applications.InceptionV3, input_shape=(75, 75, 3), include_top=False)
  assert notop.layers[1].name != reference.layers[1].name  # e.g. conv2d_94, conv2d
  notop.set_weights(reference.get_weights()[:-2])  # all but the classifier, in the same order
  model, variables, _ = from_keras("inception_v3", _save_legacy(notop, tmp_path / "notop.h5"))
  assert model.num_classes == 1000
  chex.assert_trees_all_equal(
      variables, {collection: {block: tree for block, tree in blocks.items() if block != "head"}
                  for collection, blocks in full.items()})


def test_every_problem_is_reported_at_once(inception, tmp_path):
  _, paths, _ = inception
  path = tmp_path / "broken.weights.h5"
  shutil.copy(paths["keras3"], path)
  with h5py.File(path, "r+") as f:
    del f["layers/batch_normalization_5/vars/2"]
    f["layers/conv2d_200/vars/0"] = np.zeros(3, np.float32)
    del f["layers/conv2d_3/vars/0"]
    f["layers/conv2d_3/vars/0"] = np.zeros((3, 3, 64, 80), np.float32)
  with pytest.raises(ConversionError) as error:
    from_keras("inception_v3", path)
  message = str(error.value)
  assert str(path) in message and "3 problem(s)" in message
  assert "missing layers/batch_normalization_5/vars/2" in message
  assert "unexpected layers/conv2d_200/vars/0 (3,)" in message
  assert ("layers/conv2d_3/vars/0 has shape (3, 3, 64, 80), expected (1, 1, 64, 80)"
          in message)


@pytest.mark.parametrize("arch,application,layout,preprocess,attributes,head_scale", [
    ("densenet121", "DenseNet121", "legacy", TORCHVISION, {}, 1.0),
    ("mobilenet_v2", "MobileNetV2", "keras3", MINUS_ONE_TO_ONE,
     {"same_padding": True, "bn_epsilon": 1e-3}, 1.0),
    ("resnet50", "ResNet50", "legacy", KERAS_CAFFE, {"stride_in_1x1": True}, 0.01),
])
def test_logits_match_keras_at_32px(arch, application, layout, preprocess, attributes,
                                    head_scale, tmp_path):
  """Keras's model at its smallest input, in Keras's depth order of layers.

  32 px is odd from the third stride-2 stage of MobileNetV2 on, where SAME
  padding differs from PyTorch's, and ends DenseNet and ResNet50 at a 1x1 map.
  The Keras 3 layout names MobileNetV2's depthwise convs apart
  (`depthwise_conv2d_k`). ResNet50's random conv biases are folded into its
  BatchNorms, and its 1x1 convs stride even 8x8 maps, which its 3x3 convs
  would sample differently. Its 16 random residual branches add up to features
  of about 100, which float32 sums to 1e-6 of that: `head_scale` scales its
  classifier down to logits of order 1, as the tolerance is absolute.
  """
  reference = _build(getattr(keras.applications, application), input_shape=(32, 32, 3),
                     classes=7, classifier_activation=None)
  head = reference.get_layer("predictions")
  head.set_weights([w * head_scale for w in head.get_weights()])
  if layout == "legacy":
    path = _save_legacy(reference, tmp_path / "weights.h5")
  else:
    path = tmp_path / "model.weights.h5"
    reference.save_weights(path)
  model, variables, got_preprocess = from_keras(arch, path)
  assert model.num_classes == 7 and got_preprocess == preprocess
  assert {name: getattr(model, name) for name in attributes} == attributes
  images = _images(32, 32)
  want = _keras_logits(reference, images)
  assert np.abs(want[0] - want[1]).max() > 1e-2  # the logits depend on the image
  _assert_close(arch, _logits(model, variables, images), want)


def _vgg_top(num_classes):
  """Keras VGG's top (flatten, fc1, fc2, predictions) but `_NARROW` wide."""
  return [keras.layers.Flatten(name="flatten"),
          keras.layers.Dense(_NARROW, activation="relu", name="fc1"),
          keras.layers.Dense(_NARROW, activation="relu", name="fc2"),
          keras.layers.Dense(num_classes, name="predictions")]


@pytest.mark.usefixtures("narrow")
def test_vgg16_logits_match_keras(tmp_path):
  """Keras VGG16's layers with a narrow top, on 32 px: block5 leaves a 1x1 map.

  Keras's VGG16 takes 224 px with its top, where fc1 sees a 7x7 map; at 32 px
  the reference copies the 1x1 map to 7x7, as torchvision's adaptive pooling in
  the Flax VGG does. The 7x7 flatten order itself is checked on fc6 alone.
  """
  with _zero_kernels():
    trunk = keras.applications.VGG16(weights=None, include_top=False, input_shape=(32, 32, 3))
    top = _vgg_top(10)
    x = keras.layers.UpSampling2D(7)(trunk.output)
    for layer in top:
      x = layer(x)
    reference = keras.Model(trunk.input, x)
  _randomize(reference)
  path = _save_legacy(reference, tmp_path / "vgg16.h5")
  model, variables, preprocess = from_keras("vgg16", path)
  assert model.num_classes == 10 and preprocess == KERAS_CAFFE
  images = _images(32, 32)
  _assert_close("vgg16", _logits(model, variables, images),
                _keras_logits(reference, images))

  maps = np.random.default_rng(2).normal(size=(2, 7, 7, 512)).astype(np.float32)
  want = _keras_logits(keras.Sequential([keras.Input((7, 7, 512)), *top]), maps)
  params = variables["params"]
  h = vgg.FullyConnected(_NARROW, 0.5, flatten=True).apply({"params": params["fc6"]}, maps,
                                                           train=False)
  h = vgg.FullyConnected(_NARROW, 0.5).apply({"params": params["fc7"]}, h, train=False)
  _assert_close("vgg16 fc6..head on 7x7", np.asarray(
      vgg.Classifier(10).apply({"params": params["head"]}, h, train=False)), np.asarray(want))

  _, gap, _ = from_keras("vgg16_gap", path)
  chex.assert_trees_all_equal(gap["params"], {f"block{i}": params[f"block{i}"]
                                              for i in range(1, 6)})


def test_vgg19_gap_takes_the_conv_blocks_of_a_notop_file(tmp_path):
  """A notop VGG19 in Keras 3's layout; 64 px leaves 2x2 maps for the global pool."""
  reference = _build(keras.applications.VGG19, include_top=False, input_shape=(64, 64, 3))
  reference.save_weights(tmp_path / "vgg19.weights.h5")
  model, variables, preprocess = from_keras("vgg19_gap", tmp_path / "vgg19.weights.h5")
  assert set(variables["params"]) == {f"block{i}" for i in range(1, 6)}
  assert preprocess == KERAS_CAFFE
  rng = np.random.default_rng(0)
  head = {"kernel": rng.normal(0, 0.05, size=(512, 3)).astype(np.float32),
          "bias": rng.normal(size=3).astype(np.float32)}
  images = _images(64, 64)
  features = _keras_logits(reference, images).mean((1, 2))
  want = features @ head["kernel"] + head["bias"]
  got = _logits(model.clone(num_classes=3),
                {"params": {**variables["params"], "head": {"classifier": head}}}, images)
  _assert_close("vgg19_gap", got, want)


@pytest.fixture(scope="module")
def efficientnet(tmp_path_factory):
  """Keras's EfficientNetB0 at its smallest input (32 px), 7 classes, in the download layout.

  Random squeeze-excitation gates are sigmoids of about 0, which halve each
  unit's output: the image's share of the logits would fall 2x per stage, to
  1e-3. Their `se_expand` biases are raised by 3 to open them (to about 0.95).
  """
  reference = _build(keras.applications.EfficientNetB0, input_shape=(32, 32, 3), classes=7,
                     classifier_activation=None)
  for layer in reference.layers:
    if layer.name.endswith("_se_expand"):
      kernel, bias = layer.get_weights()
      layer.set_weights([kernel, bias + 3])
  path = _save_legacy(reference, tmp_path_factory.mktemp("efficientnet_b0") / "weights.h5")
  return reference, path, from_keras("efficientnet_b0", path)


def test_efficientnet_b0_logits_match_keras(efficientnet):
  """Keras's model takes pixels, ours `preprocess(pixels)`, its Rescaling and Normalization.

  At 32 px every stride-2 conv sees an even map, where Keras's correct_pad
  (TensorFlow's SAME) pads one pixel less before than after; the last ones
  (block4, block6) a 4x4 and a 2x2 map, with 3x3 and 5x5 kernels.
  """
  reference, _, (model, variables, preprocess) = efficientnet
  assert model.num_classes == 7
  assert (model.same_padding, model.bn_epsilon) == (True, 1e-3)
  normalization = next(layer for layer in reference.layers
                       if isinstance(layer, keras.layers.Normalization))
  mean, variance, _ = normalization.get_weights()
  np.testing.assert_allclose(preprocess.mean, 255 * mean, rtol=1e-6)
  np.testing.assert_allclose(preprocess.std, 255 * np.sqrt(variance), rtol=1e-6)
  pixels = _pixels(32, 32)
  want = _keras_logits(reference, pixels.astype(np.float32))
  assert np.abs(want[0] - want[1]).max() > 1e-2  # the logits depend on the image
  _assert_close("efficientnet_b0", _logits(model, variables, preprocess(pixels)), want)


def test_efficientnet_b0_keras3_layout_gives_the_same_variables(efficientnet, tmp_path):
  """Keras 3 names the layers by class: `normalization`, `depthwise_conv2d_k`, ..."""
  reference, _, (_, want, want_preprocess) = efficientnet
  reference.save_weights(tmp_path / "model.weights.h5")
  _, got, preprocess = from_keras("efficientnet_b0", tmp_path / "model.weights.h5")
  chex.assert_trees_all_equal(got, want)
  assert preprocess == want_preprocess


def test_efficientnet_b0_imagenet_notop_file_has_torchvision_preprocessing(
    efficientnet, tmp_path, monkeypatch):
  """A notop file with the ImageNet file's Normalization, read by Keras as `weights="imagenet"`.

  That file holds ImageNet's RGB stddev as the variance (tensorflow#49930), and
  the model Keras builds for it divides by sqrt(stddev) after its Normalization:
  torchvision's convention in all. Keras reads the file in place of its download.
  """
  reference, _, (_, full, _) = efficientnet
  notop = _build(keras.applications.EfficientNetB0, include_top=False, input_shape=(32, 32, 3))
  weights = reference.get_weights()[:-2]  # all but the classifier, in the same order
  weights[:2] = [np.float32(TORCHVISION.mean) / 255,
                 np.float32(keras_efficientnet.IMAGENET_STDDEV_RGB)]  # the Normalization's
  notop.set_weights(weights)
  path = _save_legacy(notop, tmp_path / "efficientnetb0_notop.h5")
  monkeypatch.setattr(keras_efficientnet.file_utils, "get_file", lambda *args, **kwargs: path)
  with _zero_kernels():
    imagenet = keras.applications.EfficientNetB0(include_top=False, input_shape=(32, 32, 3))

  model, variables, preprocess = from_keras("efficientnet_b0", path)

  assert model.num_classes == 1000 and preprocess == TORCHVISION
  chex.assert_trees_all_equal(
      variables, {collection: {block: tree for block, tree in blocks.items() if block != "head"}
                  for collection, blocks in full.items()})
  pixels = _pixels(32, 32)
  stem_input = keras.Model(imagenet.input, imagenet.get_layer("stem_conv_pad").input)
  np.testing.assert_allclose(preprocess(pixels), stem_input(pixels.astype(np.float32)),
                             rtol=0, atol=1e-5)


def _mobilenet_v1(alpha):
  """Keras's MobileNet at its smallest input (32 px), 7 classes, its BatchNorm betas raised.

  At 32 px every stride-2 conv sees an even map, down to 2x2 for the last, where
  Keras's one pixel of padding at the end is TensorFlow's SAME. With random
  betas of mean 0, each ReLU6 zeroes half its inputs, and the image's share of
  the logits falls to 1e-2 (width 0.25) or 6e-3 (1.0); betas raised by 0.5 keep
  it above 5e-2.
  """
  reference = _build(keras.applications.MobileNet, alpha=alpha, input_shape=(32, 32, 3),
                     classes=7, classifier_activation=None)
  for layer in reference.layers:
    if isinstance(layer, keras.layers.BatchNormalization):
      gamma, beta, mean, variance = layer.get_weights()
      layer.set_weights([gamma, beta + 0.5, mean, variance])
  return reference


@pytest.fixture(scope="module")
def mobilenet_v1(tmp_path_factory):
  """`_mobilenet_v1(0.25)` in the download layout and Keras 3's."""
  reference = _mobilenet_v1(0.25)
  directory = tmp_path_factory.mktemp("mobilenet_v1")
  paths = {"legacy": _save_legacy(reference, directory / "mobilenet_2_5_224_tf.h5"),
           "keras3": directory / "model.weights.h5"}
  reference.save_weights(paths["keras3"])
  return reference, paths, from_keras("mobilenet_v1_0.25", paths["legacy"])


def _assert_mobilenet_v1_matches(reference, alpha, converted):
  """Its classifier, a 1x1 conv with bias on the pooled map, becomes the dense head."""
  model, variables, preprocess = converted
  assert model.num_classes == 7 and model.alpha == alpha and preprocess == MINUS_ONE_TO_ONE
  assert (model.same_padding, model.bn_epsilon) == (True, 1e-3)
  images = _images(32, 32)
  want = _keras_logits(reference, images)
  assert np.abs(want[0] - want[1]).max() > 1e-2  # the logits depend on the image
  _assert_close(f"mobilenet_v1_{alpha}", _logits(model, variables, images), want)
  assert sum(np.size(v) for v in jax.tree.leaves(variables)) == reference.count_params()


def test_mobilenet_v1_logits_match_keras(mobilenet_v1):
  reference, _, converted = mobilenet_v1
  _assert_mobilenet_v1_matches(reference, 0.25, converted)


def test_mobilenet_v1_1_0_logits_match_keras(tmp_path):
  """Width 1.0, from a Keras 3 file."""
  reference = _mobilenet_v1(1.0)
  reference.save_weights(tmp_path / "model.weights.h5")
  _assert_mobilenet_v1_matches(reference, 1.0,
                               from_keras("mobilenet_v1_1.0", tmp_path / "model.weights.h5"))


def test_mobilenet_v1_keras3_and_notop_files_give_the_same_variables(mobilenet_v1, tmp_path):
  """Keras 3 names the layers by class (`depthwise_conv2d_k`; `conv_preds` is `conv2d_14`)."""
  reference, paths, (_, full, _) = mobilenet_v1
  _, keras3, _ = from_keras("mobilenet_v1_0.25", paths["keras3"])
  chex.assert_trees_all_equal(keras3, full)
  notop = _build(keras.applications.MobileNet, alpha=0.25, include_top=False,
                 input_shape=(32, 32, 3))
  notop.set_weights(reference.get_weights()[:-2])  # all but conv_preds, in the same order
  model, variables, _ = from_keras(
      "mobilenet_v1_0.25", _save_legacy(notop, tmp_path / "mobilenet_2_5_224_tf_no_top.h5"))
  assert model.num_classes == 1000
  chex.assert_trees_all_equal(
      variables, {collection: {block: tree for block, tree in blocks.items() if block != "head"}
                  for collection, blocks in full.items()})


def test_mobilenet_v1_problems_are_reported_at_once(mobilenet_v1, tmp_path):
  """A width-0.25 file read as width 0.5, with an array deleted and one added.

  Every array but the classifier's bias is half as wide as width 0.5 expects.
  """
  _, paths, _ = mobilenet_v1
  path = tmp_path / "broken.weights.h5"
  shutil.copy(paths["keras3"], path)
  with h5py.File(path, "r+") as f:
    del f["layers/batch_normalization_3/vars/1"]
    f["layers/conv2d_15/vars/0"] = np.zeros(3, np.float32)
  with pytest.raises(ConversionError) as error:
    from_keras("mobilenet_v1_0.5", path)
  message = str(error.value)
  # The stem's conv and 4 BatchNorm arrays, 13 units' 2 convs and 2 x 4 BatchNorm
  # arrays, the classifier's kernel (the deleted array among them), and the added array.
  assert f"{5 + 13 * 10 + 1 + 1} problem(s)" in message
  assert "missing layers/batch_normalization_3/vars/1 (32,)" in message
  assert "unexpected layers/conv2d_15/vars/0 (3,)" in message
  assert ("layers/depthwise_conv2d_1/vars/0 has shape (3, 3, 16, 1), expected (3, 3, 32, 1) "
          "(for params/block2/unit0/depthwise/conv/kernel)") in message
  assert ("layers/conv2d_1/vars/0 has shape (1, 1, 8, 16), expected (1, 1, 16, 32) "
          "(for params/block1/unit0/pointwise/conv/kernel)") in message
