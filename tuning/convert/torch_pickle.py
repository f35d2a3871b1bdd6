"""Reads PyTorch `.pth` state dicts with numpy alone.

A `.pth` file is a pickle whose tensors point into raw storages. `torch.save`
writes either a zip (`<name>/data.pkl` plus one `<name>/data/<key>` record per
storage, torch >= 1.6) or the legacy stream of pickles followed by the storages
(the format of torchvision's older checkpoints, including MobileNetV2's). Only
tensors and their containers are unpickled: any other global in the file is an
error, so reading a checkpoint never runs code from it.
"""
from __future__ import annotations

import collections
import dataclasses
import io
import os
import pickle
import struct
import zipfile
from collections.abc import Mapping

import ml_dtypes
import numpy as np

_STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_, "ComplexFloatStorage": np.complex64,
    "ComplexDoubleStorage": np.complex128,
    "UntypedStorage": np.uint8,  # raw bytes
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


@dataclasses.dataclass(frozen=True)
class _StorageType:
  dtype: np.dtype


@dataclasses.dataclass(frozen=True)
class _Storage:
  """A typed window on the raw bytes of storage `key` (legacy views start at an offset)."""
  key: str
  dtype: np.dtype
  byte_offset: int = 0


@dataclasses.dataclass(frozen=True)
class _Tensor:
  """A tensor met while unpickling; legacy files store the bytes after the pickle."""
  storage: _Storage
  offset: int
  size: tuple[int, ...]
  stride: tuple[int, ...]


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
  return _Tensor(storage, storage_offset, tuple(size), tuple(stride))


def _rebuild_parameter(data, *unused):
  return data


_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
}


class _Unpickler(pickle.Unpickler):
  """Rebuilds tensors as `_Tensor` records and refuses every other global.

  `storage_dtypes` records each storage's dtype where it first appears, which
  fixes the element size of its bytes in the legacy format, as in torch.
  """

  def __init__(self, file):
    super().__init__(file)
    self.storage_dtypes: dict[str, np.dtype] = {}

  def find_class(self, module, name):
    if (module, name) in _GLOBALS:
      return _GLOBALS[(module, name)]
    if module in ("torch", "torch.storage", "torch.cuda") and name in _STORAGE_DTYPES:
      return _StorageType(np.dtype(_STORAGE_DTYPES[name]))
    raise ValueError(f"unsupported object {module}.{name} in the pickle; "
                     "only tensors and state-dict containers can be read without torch")

  def persistent_load(self, pid):
    # zip: ('storage', type, key, location, numel);
    # legacy: the same plus view_metadata (view_key, offset, size) or None.
    if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"
            and isinstance(pid[1], _StorageType)):
      raise ValueError(f"unsupported persistent id {pid!r}")
    key, dtype = str(pid[2]), pid[1].dtype
    self.storage_dtypes.setdefault(key, dtype)
    if len(pid) > 5 and pid[5] is not None:
      return _Storage(key, dtype, pid[5][1] * dtype.itemsize)
    return _Storage(key, dtype)


def _unwrap(obj) -> Mapping[str, _Tensor]:
  """The state dict itself, or the one a training checkpoint keeps under `state_dict`/`model`."""
  is_state_dict = lambda d: isinstance(d, Mapping) and all(
      isinstance(v, _Tensor) for v in d.values())
  if is_state_dict(obj):
    return obj
  for key in ("state_dict", "model"):
    if isinstance(obj, Mapping) and is_state_dict(obj.get(key)):
      return obj[key]
  found = f"a dict with keys {list(obj)[:10]}" if isinstance(obj, Mapping) else type(obj).__name__
  raise ValueError(f"no state dict of tensors found (the pickle holds {found})")


def _materialize(tensor: _Tensor, raw: bytes, big_endian: bool) -> np.ndarray:
  """Copies the (offset, size, stride) view of `raw` into a fresh native-order array."""
  dtype = tensor.storage.dtype
  if 0 in tensor.size:
    return np.zeros(tensor.size, dtype)
  start = tensor.storage.byte_offset + tensor.offset * dtype.itemsize
  count = (len(raw) - start) // dtype.itemsize
  last = sum((n - 1) * s for n, s in zip(tensor.size, tensor.stride))
  if start < 0 or last >= count or min(tensor.stride, default=0) < 0:
    raise ValueError(f"tensor view {tensor} exceeds its storage of {len(raw)} bytes")
  flat = np.frombuffer(raw, dtype, count, start)
  array = np.lib.stride_tricks.as_strided(
      flat, tensor.size, [s * dtype.itemsize for s in tensor.stride], writeable=False).copy()
  return array.byteswap() if big_endian else array


def _load_zip(path: str) -> dict[str, np.ndarray]:
  with zipfile.ZipFile(path) as archive:
    names = archive.namelist()
    pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pickles) != 1:
      raise ValueError("a zip file but not a torch.save archive (no <name>/data.pkl)")
    prefix = pickles[0][:-len("data.pkl")]
    big_endian = (prefix + "byteorder" in names
                  and archive.read(prefix + "byteorder").strip() == b"big")
    state = _unwrap(_Unpickler(io.BytesIO(archive.read(pickles[0]))).load())
    raws = {}
    for tensor in state.values():
      key = tensor.storage.key
      if key not in raws:
        raws[key] = archive.read(f"{prefix}data/{key}")
  return {name: _materialize(t, raws[t.storage.key], big_endian) for name, t in state.items()}


def _load_legacy(path: str) -> dict[str, np.ndarray]:
  """Legacy stream: magic, protocol, sys info, the object, storage keys, storages."""
  with open(path, "rb") as f:
    try:
      magic = _Unpickler(f).load()
    except Exception as e:  # Any file can start with bytes that break the unpickler.
      raise ValueError("not a PyTorch checkpoint (neither a torch.save zip nor a legacy "
                       f"torch.save stream): {e}") from None
    if magic != _LEGACY_MAGIC or _Unpickler(f).load() != _LEGACY_PROTOCOL:
      raise ValueError("not a PyTorch checkpoint (no torch.save magic number)")
    big_endian = not _Unpickler(f).load().get("little_endian", True)
    unpickler = _Unpickler(f)
    root = unpickler.load()
    raws = {}
    # Each storage follows as its element count (int64) and its bytes.
    for key in _Unpickler(f).load():
      (numel,) = struct.unpack(">q" if big_endian else "<q", f.read(8))
      nbytes = numel * unpickler.storage_dtypes[key].itemsize
      raws[key] = f.read(nbytes)
      if len(raws[key]) != nbytes:
        raise ValueError(f"truncated file (storage {key} needs {nbytes} bytes)")
  return {name: _materialize(t, raws[t.storage.key], big_endian)
          for name, t in _unwrap(root).items()}


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads the tensors of a `torch.save`d state dict as numpy arrays, without torch.

  Args:
    path: a `.pth`/`.pt` file holding a state dict, or a checkpoint dict that keeps
      one under `state_dict` or `model`.

  Returns:
    `{key: array}` in the file's order, with torch's dtypes (bfloat16 via ml_dtypes).

  Raises:
    FileNotFoundError: if `path` does not exist.
    ValueError: naming the file, if it is not a readable checkpoint.
  """
  path = os.fspath(path)
  try:
    return _load_zip(path) if zipfile.is_zipfile(path) else _load_legacy(path)
  except (ValueError, pickle.UnpicklingError, EOFError, struct.error, zipfile.BadZipFile,
          KeyError) as e:
    raise ValueError(f"{path}: {e}") from e
