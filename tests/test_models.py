"""Architectures: named blocks, shapes, the depthwise conv and padding conventions."""
import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tuning import models
from tuning.models.layers import DepthwiseConv, conv_padding


RESNET_BLOCKS = ("stem", "layer1", "layer2", "layer3", "layer4", "head")


@pytest.mark.parametrize("arch, blocks, n_params", [
    ("mobilenet_v2", ("stem", *(f"block{i}" for i in range(1, 8)), "conv_last", "head"), 3_504_872),
    ("resnet18", RESNET_BLOCKS, 11_689_512),
    ("resnet50", RESNET_BLOCKS, 25_557_032),
    ("densenet121", ("stem", "block1", "block2", "block3", "block4", "head"), 7_978_856),
])
def test_blocks_are_named_ordered_and_own_all_params(arch, blocks, n_params):
  model = models.create(arch, num_classes=1000)
  variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
  assert type(model).block_names == blocks
  assert set(variables["params"]) == set(blocks)
  # torchvision's parameter counts at 1000 classes.
  assert sum(np.prod(p.shape) for p in jax.tree.leaves(variables["params"])) == n_params
  # The head is only the fresh classifier: every BatchNorm belongs to a transferable block.
  assert set(variables["params"]["head"]) == {"classifier"}
  assert "head" not in variables["batch_stats"]
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
