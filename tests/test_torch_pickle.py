"""Reading `torch.save` files with numpy alone must give torch's tensors exactly."""
from __future__ import annotations

import pickle

import numpy as np
import pytest

from tuning.convert import load_state_dict

TORCH_REASON = "torch is needed to write the reference checkpoints"
FORMATS = {"zip": True, "legacy": False}  # value: torch.save's _use_new_zipfile_serialization


def _save(torch, obj, path, fmt):
  torch.save(obj, path, _use_new_zipfile_serialization=FORMATS[fmt])
  return path


def _tensors(torch):
  """Every storage layout a state dict can hold."""
  g = torch.Generator().manual_seed(0)
  base = torch.arange(40, dtype=torch.float32)
  matrix = torch.randn(5, 7, generator=g)
  return {
      "float32": torch.randn(3, 4, 5, generator=g),
      "float16": torch.randn(6, generator=g).half(),
      "bfloat16": torch.randn(6, generator=g).bfloat16(),
      "float64": torch.randn(2, 2, generator=g).double(),
      "int64": torch.tensor([0, -3, 2**40]),
      "uint8": torch.arange(7, dtype=torch.uint8),
      "bool": torch.tensor([True, False, True]),
      "scalar": torch.tensor(1431430),
      "empty": torch.zeros(0, 3),
      "transposed": matrix.t(),
      "strided": matrix[::2, 1::3],
      "view_offset": base[3:9],  # shares `base`'s storage, at an offset
      "view_2d": base[10:].view(5, 6),
      "base": base,
  }


@pytest.mark.parametrize("fmt", FORMATS)
def test_reads_exactly_what_torch_saved(tmp_path, fmt):
  torch = pytest.importorskip("torch", reason=TORCH_REASON)
  tensors = _tensors(torch)
  loaded = load_state_dict(_save(torch, tensors, tmp_path / "t.pth", fmt))
  assert list(loaded) == list(tensors)
  for key, tensor in tensors.items():
    want = tensor.view(torch.int16).numpy() if tensor.dtype == torch.bfloat16 else tensor.numpy()
    got = loaded[key].view(np.int16) if tensor.dtype == torch.bfloat16 else loaded[key]
    assert got.dtype == want.dtype, key
    np.testing.assert_array_equal(got, want, err_msg=key)


@pytest.mark.parametrize("fmt", FORMATS)
def test_module_state_dict_and_wrapped_checkpoint(tmp_path, fmt):
  torch = pytest.importorskip("torch", reason=TORCH_REASON)
  module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
  state = module.state_dict()
  checkpoint = {"epoch": 3, "state_dict": state, "params": list(module.parameters())}
  loaded = load_state_dict(_save(torch, checkpoint, tmp_path / "ckpt.pth", fmt))
  assert list(loaded) == list(state)
  for key, tensor in state.items():
    np.testing.assert_array_equal(loaded[key], tensor.numpy(), err_msg=key)


def test_not_a_checkpoint_names_the_file(tmp_path):
  path = tmp_path / "notes.txt"
  path.write_text("not a checkpoint\n")
  with pytest.raises(ValueError, match=f"{path}.*not a PyTorch checkpoint"):
    load_state_dict(path)


class _Exploit:
  def __reduce__(self):
    return (exec, ("raise SystemExit('the pickle ran code')",))


def test_refuses_globals_other_than_tensors(tmp_path):
  """Reading a checkpoint never runs code from it."""
  path = tmp_path / "evil.pth"
  path.write_bytes(pickle.dumps({"x": _Exploit()}))
  with pytest.raises(ValueError, match=f"{path}.*unsupported object builtins.exec"):
    load_state_dict(path)
