"""Reads PyTorch checkpoint files into numpy arrays without torch and without running pickled code.

Used to convert pretrained target networks for teacher distillation (docs/method.md §3.5, §3.6). Both on-disk
formats are handled: the legacy one (a stream of pickles, storages appended raw) and the zip one
(`archive/data.pkl` plus one file per storage). The unpickler resolves only the globals a tensor state dict
needs (`torch._utils._rebuild_tensor_v2`, `collections.OrderedDict`, the storage types) and refuses every
other global, so a malicious pickle raises `UnsafeCheckpointError` before any of its code runs.
"""

import collections
import io
import os
import pickle
import struct
import zipfile
from typing import Any, BinaryIO

import numpy as np

_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c
_STORAGE_DTYPES = {
    'DoubleStorage': np.float64, 'FloatStorage': np.float32, 'HalfStorage': np.float16,
    'BFloat16Storage': 'bfloat16', 'LongStorage': np.int64, 'IntStorage': np.int32,
    'ShortStorage': np.int16, 'CharStorage': np.int8, 'ByteStorage': np.uint8, 'BoolStorage': np.bool_,
}


class UnsafeCheckpointError(pickle.UnpicklingError):
  """The checkpoint's pickle names a global outside the tensor allow-list."""


class _StorageType:
  """Stands in for `torch.FloatStorage` etc.: only its numpy dtype matters."""

  def __init__(self, name: str):
    self.name = name
    self.dtype = _STORAGE_DTYPES[name]

  def decode(self, raw: bytes) -> np.ndarray:
    if self.dtype == 'bfloat16':  # numpy has no bfloat16: widen the 16 stored bits to float32.
      return (np.frombuffer(raw, '<u2').astype(np.uint32) << 16).view(np.float32)
    return np.frombuffer(raw, np.dtype(self.dtype).newbyteorder('<'))

  @property
  def itemsize(self) -> int:
    return 2 if self.dtype == 'bfloat16' else np.dtype(self.dtype).itemsize


class _Storage:
  """A storage named in the pickle; its data arrive later (legacy format) or from the zip."""

  def __init__(self, storage_type: _StorageType, data: np.ndarray | None = None):
    self.type = storage_type
    self.data = data


class _TensorRef:
  """`_rebuild_tensor_v2(storage, offset, size, stride, ...)`, materialised once the storage has data."""

  def __init__(self, storage: _Storage, offset: int, size: tuple, stride: tuple):
    self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

  def to_numpy(self) -> np.ndarray:
    data = self.storage.data
    if data is None:
      raise pickle.UnpicklingError('safe_torch_load: a tensor refers to a storage that the file never wrote')
    if not self.size:
      return np.array(data[self.offset])
    item = data.itemsize
    needed = self.offset + 1 + sum((n - 1) * s for n, s in zip(self.size, self.stride) if n > 0)
    if any(n == 0 for n in self.size):
      return np.zeros(self.size, data.dtype)
    if needed > data.size or self.offset < 0 or min(self.stride) < 0:
      raise pickle.UnpicklingError(f'safe_torch_load: tensor view {self.size}/{self.stride}+{self.offset} '
                                   f'exceeds its storage of {data.size} elements')
    view = np.lib.stride_tricks.as_strided(data[self.offset:], self.size, [s * item for s in self.stride])
    return np.array(view)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
  del requires_grad, backward_hooks, metadata
  return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_tensor(storage, storage_offset, size, stride):
  return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
  del requires_grad, backward_hooks
  return data


_ALLOWED = {
    ('collections', 'OrderedDict'): collections.OrderedDict,
    ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor_v2,
    ('torch._utils', '_rebuild_tensor'): _rebuild_tensor,
    ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
    **{('torch', name): _StorageType(name) for name in _STORAGE_DTYPES},
}


class _RestrictedUnpickler(pickle.Unpickler):
  """Resolves only the allow-listed globals; storages come back through `persistent_load`."""

  def __init__(self, file: BinaryIO, source: str, storages: dict[str, _Storage], zip_reader=None):
    super().__init__(file, encoding='utf-8')
    self._source, self._storages, self._zip_reader = source, storages, zip_reader

  def find_class(self, module: str, name: str) -> Any:
    if (module, name) in _ALLOWED:
      return _ALLOWED[(module, name)]
    raise UnsafeCheckpointError(
        f'{self._source}: the pickle asks for the global {module}.{name}, which a tensor state dict never '
        'needs; refusing to load it (the file may run code). Only tensors in (Ordered)dicts are accepted.')

  def persistent_load(self, pid: Any) -> Any:
    if not isinstance(pid, tuple) or not pid or pid[0] != 'storage':
      raise UnsafeCheckpointError(f'{self._source}: unknown persistent id {pid!r}')
    storage_type, key = pid[1], str(pid[2])
    if not isinstance(storage_type, _StorageType):
      raise UnsafeCheckpointError(f'{self._source}: persistent id {pid!r} names no storage type')
    if key not in self._storages:
      storage = _Storage(storage_type)
      if self._zip_reader is not None:
        storage.data = storage_type.decode(self._zip_reader(key))
      self._storages[key] = storage
    storage = self._storages[key]
    if len(pid) > 5 and pid[5] is not None:  # legacy storage view: (view key, offset, size)
      _, offset, size = pid[5]
      return _StorageView(storage, offset, size)
    return storage


class _StorageView(_Storage):
  """A legacy-format view into a larger storage."""

  def __init__(self, base: _Storage, offset: int, size: int):
    super().__init__(base.type)
    self._base, self._offset, self._size = base, offset, size

  @property
  def data(self):
    return None if self._base.data is None else self._base.data[self._offset:self._offset + self._size]

  @data.setter
  def data(self, value):
    del value


def _materialise(obj: Any) -> Any:
  if isinstance(obj, _TensorRef):
    return obj.to_numpy()
  if isinstance(obj, dict):
    out = type(obj)() if isinstance(obj, collections.OrderedDict) else {}
    for k, v in obj.items():
      out[k] = _materialise(v)
    return out
  if isinstance(obj, (list, tuple)):
    return type(obj)(_materialise(v) for v in obj)
  return obj


def _load_zip(path: str) -> Any:
  with zipfile.ZipFile(path) as archive:
    names = archive.namelist()
    pkl = [n for n in names if n.endswith('/data.pkl') or n == 'data.pkl']
    if not pkl:
      raise pickle.UnpicklingError(f'{path}: a zip file without data.pkl is not a PyTorch checkpoint')
    prefix = pkl[0][:-len('data.pkl')]
    reader = lambda key: archive.read(f'{prefix}data/{key}')
    storages: dict[str, _Storage] = {}
    result = _RestrictedUnpickler(io.BytesIO(archive.read(pkl[0])), path, storages, reader).load()
  return _materialise(result)


def _load_legacy(path: str) -> Any:
  with open(path, 'rb') as f:
    header = []
    for _ in range(3):  # magic number, protocol version, system info: plain values, no globals
      header.append(_RestrictedUnpickler(f, path, {}).load())
    if header[0] != _LEGACY_MAGIC:
      raise pickle.UnpicklingError(f'{path}: not a PyTorch checkpoint (bad magic number {header[0]!r})')
    little_endian = header[2].get('little_endian', True) if isinstance(header[2], dict) else True
    if not little_endian:
      raise pickle.UnpicklingError(f'{path}: big-endian checkpoints are not supported')
    storages: dict[str, _Storage] = {}
    result = _RestrictedUnpickler(f, path, storages).load()
    keys = _RestrictedUnpickler(f, path, {}).load()
    for key in keys:
      storage = storages[str(key)]
      (count,) = struct.unpack('<q', f.read(8))
      raw = f.read(count * storage.type.itemsize)
      if len(raw) != count * storage.type.itemsize:
        raise pickle.UnpicklingError(f'{path}: truncated storage {key}')
      storage.data = storage.type.decode(raw)
  return _materialise(result)


def load(path: str | os.PathLike) -> Any:
  """Loads a PyTorch checkpoint (legacy or zip) as nested dicts of numpy arrays, running no pickled code.

  Raises `UnsafeCheckpointError` if the pickle names any global beyond tensors, OrderedDict and storages.
  """
  path = os.fspath(path)
  if zipfile.is_zipfile(path):
    return _load_zip(path)
  return _load_legacy(path)


_SAFETENSORS_DTYPES = {'F64': '<f8', 'F32': '<f4', 'F16': '<f2', 'I64': '<i8', 'I32': '<i4', 'I16': '<i2',
                       'I8': 'i1', 'U8': 'u1', 'BOOL': '?'}


def load_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """A .safetensors file (8-byte header length, JSON header, raw little-endian data) as numpy arrays."""
  import json  # pylint: disable=g-import-not-at-top
  with open(path, 'rb') as f:
    (length,) = struct.unpack('<Q', f.read(8))
    header = json.loads(f.read(length))
    data = f.read()
  out = {}
  for name, info in header.items():
    if name == '__metadata__':
      continue
    start, end = info['data_offsets']
    if info['dtype'] == 'BF16':
      raw = np.frombuffer(data[start:end], '<u2').astype(np.uint32) << 16
      out[name] = raw.view(np.float32).reshape(info['shape'])
    elif info['dtype'] in _SAFETENSORS_DTYPES:
      out[name] = np.frombuffer(data[start:end], _SAFETENSORS_DTYPES[info['dtype']]).reshape(info['shape']).copy()
    else:
      raise ValueError(f'{path}: tensor {name} has unsupported dtype {info["dtype"]}')
  return out


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """A state dict from a .safetensors file or a PyTorch checkpoint (via `load`, unwrapping a {'state_dict':
  …} or {'model': …} wrapper); every value must be an array."""
  if os.fspath(path).endswith('.safetensors'):
    return load_safetensors(path)
  obj = load(path)
  for wrapper in ('state_dict', 'model'):
    if isinstance(obj, dict) and wrapper in obj and isinstance(obj[wrapper], dict):
      obj = obj[wrapper]
  if not isinstance(obj, dict):
    raise ValueError(f'{path}: holds a {type(obj).__name__}, not a state dict')
  bad = [k for k, v in obj.items() if not isinstance(v, np.ndarray)]
  if bad:
    raise ValueError(f'{path}: entries {bad[:5]} are not tensors; expected a plain state dict')
  return dict(obj)
