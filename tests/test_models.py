"""Architectures: named blocks, shapes, the depthwise conv and padding conventions."""
import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tuning import models
from tuning.models.layers import Conv, DepthwiseConv, conv_general_dilated, conv_padding


RESNET_BLOCKS = ("stem", "layer1", "layer2", "layer3", "layer4", "head")
MOBILENET_V2_BLOCKS = ("stem", *(f"block{i}" for i in range(1, 8)), "conv_last", "head")
VGG_CONV_BLOCKS = tuple(f"block{i}" for i in range(1, 6))
MOBILENET_V1_BLOCKS = ("stem", "block1", "block2", "block3", "block4", "block5", "head")
SQUEEZENET_BLOCKS = ("stem", *(f"fire{i}" for i in range(2, 10)), "head")


# Parameter counts at 1000 classes of the framework each architecture's weights come from.
@pytest.mark.parametrize("arch, blocks, n_params", [
    ("mobilenet_v2", MOBILENET_V2_BLOCKS, 3_504_872),  # torchvision
    ("resnet18", RESNET_BLOCKS, 11_689_512),  # torchvision
    ("resnet50", RESNET_BLOCKS, 25_557_032),  # torchvision
    ("densenet121", ("stem", "block1", "block2", "block3", "block4", "head"), 7_978_856),
    ("efficientnet_b0", MOBILENET_V2_BLOCKS, 5_288_548),  # torchvision
    ("efficientnet_lite0", MOBILENET_V2_BLOCKS, 4_652_008),  # efficientnet-lite-pytorch
    # Keras's `MobileNet(alpha)` trainable parameters (BatchNorm's moving statistics are
    # in `batch_stats` here).
    ("mobilenet_v1_1.0", MOBILENET_V1_BLOCKS, 4_231_976),
    ("mobilenet_v1_0.25", MOBILENET_V1_BLOCKS, 470_072),
    ("squeezenet1_1", SQUEEZENET_BLOCKS, 1_235_496),  # torchvision
    ("vgg16", (*VGG_CONV_BLOCKS, "fc6", "fc7", "head"), 138_357_544),  # torchvision
    ("vgg19", (*VGG_CONV_BLOCKS, "fc6", "fc7", "head"), 143_667_240),  # torchvision
    # torchvision's conv parameters and a 512 x 1000 linear head.
    ("vgg16_gap", (*VGG_CONV_BLOCKS, "head"), 14_714_688 + 513_000),
    ("vgg19_gap", (*VGG_CONV_BLOCKS, "head"), 20_024_384 + 513_000),
])
def test_blocks_are_named_ordered_and_own_all_params(arch, blocks, n_params):
  model = models.create(arch, num_classes=1000)
  variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
  assert type(model).block_names == blocks
  assert set(variables["params"]) == set(blocks)
  assert sum(np.prod(p.shape) for p in jax.tree.leaves(variables["params"])) == n_params
  # The head is only the fresh classifier: every BatchNorm belongs to a transferable block.
  assert set(variables["params"]["head"]) == {"classifier"}
  assert "head" not in variables.get("batch_stats", {})
  out = jax.eval_shape(model.apply, variables, jnp.zeros((3, 64, 64, 3)))
  chex.assert_shape(out, (3, 1000))


def test_unknown_arch_lists_the_known_ones():
  with pytest.raises(ValueError, match="mobilenet_v2"):
    models.create("alexnet9", 2)


@pytest.mark.parametrize("size, stride, same", [
    (16, 1, False), (16, 2, False), (15, 2, False), (16, 2, True), (15, 2, True), (7, 1, True)])
def test_depthwise_conv_equals_grouped_conv(size, stride, same):
  x = jax.random.normal(jax.random.key(0), (2, size, size + 1, 8))
  dw = DepthwiseConv(3, stride, same)
  params = dw.init(jax.random.key(1), x)
  grouped = nn.Conv(8, (3, 3), (stride, stride), feature_group_count=8, use_bias=False,
                    padding=conv_padding(x.shape[1:3], 3, stride, same))
  want = grouped.apply(params, x)
  chex.assert_trees_all_close(dw.apply(params, x), want, atol=1e-5, rtol=1e-5)
  # ... and the same gradients, which is what training uses.
  grad = lambda f: jax.grad(lambda p, x: jnp.sum(f(p, x) ** 2), argnums=(0, 1))(params, x)
  chex.assert_trees_all_close(grad(dw.apply), grad(grouped.apply), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("kernel, stride, padding, channels", [
    (1, 1, ((0, 0), (0, 0)), 5), (1, 2, ((0, 0), (0, 0)), 5), (1, 2, "SAME", 5),
    (1, 1, "VALID", 5), (1, 1, ((1, 1), (0, 0)), 5), (3, 1, ((1, 1), (1, 1)), 5),
    (3, 2, "SAME", 5), (3, 2, ((1, 1), (1, 1)), 3), (3, 2, ((0, 1), (0, 1)), 3),
    (3, 2, "SAME", 3), (3, 2, "VALID", 3), (3, 1, ((1, 1), (1, 1)), 3)])
def test_conv_equals_xla_conv(kernel, stride, padding, channels, jit):
  """1x1 convs and stride-2 3x3 convs of 3-channel images run as matrix products (the
  rest as XLA convs): the same outputs and gradients as `lax.conv_general_dilated`,
  on odd and even maps."""
  x = jax.random.normal(jax.random.key(0), (2, 7, 6, channels))
  w = jax.random.normal(jax.random.key(1), (kernel, kernel, channels, 4))
  dn = jax.lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))

  def loss(conv):
    return lambda x, w: jnp.sum(jnp.sin(conv(x, w, (stride, stride), padding,
                                             dimension_numbers=dn)))
  ours = jax.value_and_grad(loss(conv_general_dilated), argnums=(0, 1))
  ours = jax.jit(ours) if jit else ours
  want = jax.value_and_grad(loss(jax.lax.conv_general_dilated), argnums=(0, 1))
  chex.assert_trees_all_close(ours(x, w), want(x, w), atol=1e-5, rtol=1e-5)


def test_conv_module_keeps_flax_parameters():
  """`Conv` is `nn.Conv` (same parameter names, shapes and initial values) with the fast conv."""
  x = jnp.ones((1, 4, 4, 3))
  ours, flax_conv = Conv(8, (1, 1), name="conv"), nn.Conv(8, (1, 1), name="conv")
  params = ours.init(jax.random.key(0), x)
  chex.assert_trees_all_equal(params, flax_conv.init(jax.random.key(0), x))
  chex.assert_trees_all_close(ours.apply(params, x), flax_conv.apply(params, x), rtol=1e-6)


@pytest.mark.parametrize("size, stride, kernel", [(16, 2, 3), (15, 2, 3), (16, 1, 3), (9, 2, 1)])
def test_same_padding_matches_xla_same(size, stride, kernel):
  x = jax.random.normal(jax.random.key(0), (1, size, size, 4))
  w = jax.random.normal(jax.random.key(1), (kernel, kernel, 4, 5))
  conv = lambda padding: jax.lax.conv_general_dilated(
      x, w, (stride, stride), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
  chex.assert_trees_all_close(conv(conv_padding((size, size), kernel, stride, True)), conv("SAME"))


def test_torch_padding_is_symmetric():
  assert conv_padding((16, 15), 3, 2, same=False) == ((1, 1), (1, 1))
  assert conv_padding((16, 16), 7, 2, same=False) == ((3, 3), (3, 3))
