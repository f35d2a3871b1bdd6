"""What the converters share: matching a weight source against the model's variables.

A converter names, for every variable of the Flax model, the source array it
comes from and the axis permutation into Flax's layout (a `Link`).
`check_and_build` then checks the whole source at once, so a wrong file or
architecture is reported in one error listing every missing, unexpected and
mis-shaped array rather than failing on the first.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

Path = tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Link:
  """Model variable = `np.transpose(source[key], perm)` (`perm=None`: as is)."""
  key: str
  perm: tuple[int, ...] | None = None

  def source_shape(self, model_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape the source array must have to give `model_shape`."""
    if self.perm is None:
      return tuple(model_shape)
    shape = [0] * len(self.perm)
    for axis, source_axis in enumerate(self.perm):
      shape[source_axis] = model_shape[axis]
    return tuple(shape)


class ConversionError(ValueError):
  """A weight source does not fit the model; the message lists every problem."""


def expected_variables(model: nn.Module) -> dict[Path, jax.ShapeDtypeStruct]:
  """Flattened `{(collection, *path): shape}` of `model`'s variables, computing none.

  Every model ends in global or adaptive pooling, so any input size they all
  accept gives the same shapes; ImageNet's 224 px is one (AlexNet needs 67).
  """
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 224, 224, 3)))
  return traverse_util.flatten_dict(shapes)


def check_and_build(expected: Mapping[Path, jax.ShapeDtypeStruct], links: Mapping[Path, Link],
                    source: Mapping[str, np.ndarray], source_name: str, target: str,
                    unused_ok: Callable[[str], bool] = lambda key: False) -> dict:
  """Builds the model's variables from `source`, or raises one error listing every problem.

  Args:
    expected: the model's variables, as from `expected_variables`.
    links: where each model variable comes from.
    source: the arrays of the weight file, by key.
    source_name: the file (or a description of the source), for the error.
    target: the model, for the error.
    unused_ok: source keys that may stay unused (e.g. BatchNorm step counters).

  Returns:
    Nested float32 numpy variables, e.g. `{"params": ..., "batch_stats": ...}`.

  Raises:
    ConversionError: naming each source key that is missing, unexpected or of the
      wrong shape (with the shape found and the shape expected, in the source's layout).
  """
  problems, variables, used = [], {}, set()
  for path, shape in expected.items():
    name = "/".join(path)
    link = links.get(path)
    if link is None:
      problems.append(f"nothing in the source maps to model variable {name} {shape.shape}")
      continue
    used.add(link.key)
    want = link.source_shape(shape.shape)
    if link.key not in source:
      problems.append(f"missing {link.key} {want} (for {name})")
      continue
    array = np.asarray(source[link.key])
    if array.shape != want:
      problems.append(f"{link.key} has shape {array.shape}, expected {want} (for {name})")
      continue
    if link.perm is not None:
      array = np.transpose(array, link.perm)
    variables[path] = np.ascontiguousarray(array, np.float32)
  problems += [f"unexpected {key} {np.shape(source[key])}" for key in source
               if key not in used and not unused_ok(key)]
  if problems:
    raise ConversionError(f"{source_name} does not fit {target}: {len(problems)} problem(s):\n  "
                          + "\n  ".join(problems))
  return traverse_util.unflatten_dict(variables)
