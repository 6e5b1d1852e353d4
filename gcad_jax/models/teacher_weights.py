"""Pretrained E_loc teacher weights: the shipped files and user checkpoints, msgpack only (docs/method.md §3.5, §3.6).

A teacher file is a flax msgpack of {'format', 'p', 'params', 'meta'}: the patch network's parameters (the
dense form has the same tree, §3.3) and a description of the run that made them. No pickle is ever read.
"""

from __future__ import annotations

import importlib.resources
import json
import os
import pathlib
from typing import Any, Mapping

from flax import serialization
import jax
import numpy as np

FORMAT = 'gcad_jax.teacher/1'
INITS = ('shipped', 'random')


def shipped_path(p: int) -> pathlib.Path:
  """Where the package's teacher for patch size p lives (`gcad_jax/weights/teacher_p{p}.msgpack`)."""
  return pathlib.Path(str(importlib.resources.files('gcad_jax') / 'weights' / f'teacher_p{p}.msgpack'))


def teacher_path(init: str, p: int) -> pathlib.Path:
  """The file that `config.teacher.init` names for scale p: the shipped one, or a path in which `{p}` stands for
  the patch size, so that one value serves both scales (`runs/teacher_p{p}/teacher_p{p}.msgpack`)."""
  return shipped_path(p) if init == 'shipped' else pathlib.Path(init.replace('{p}', str(p)))


def save_teacher_params(path: str | os.PathLike, params: Any, p: int, meta: Mapping[str, Any] | None = None,
                        dtype: Any = np.float32) -> None:
  """Writes a teacher file: params cast to `dtype` (float32 or float16) plus JSON-able `meta`."""
  params = jax.tree_util.tree_map(lambda a: np.asarray(a).astype(dtype), jax.device_get(params))
  payload = {'format': FORMAT, 'p': int(p), 'params': serialization.to_state_dict(params),
             'meta': json.dumps(dict(meta or {}))}
  path = pathlib.Path(path)
  tmp = path.with_name(path.name + '.tmp')
  tmp.write_bytes(serialization.msgpack_serialize(payload))
  os.replace(tmp, path)


def read_teacher_file(path: str | os.PathLike) -> dict[str, Any]:
  """{'p', 'params', 'meta'} of a teacher file, or of a `gcad_jax.distill` checkpoint (its teacher part)."""
  path = pathlib.Path(path)
  if path.suffix in ('.pth', '.pt', '.pkl', '.pickle', '.ckpt', '.bin'):
    raise ValueError(f'{path}: teacher weights are read from flax msgpack files only, never from pickles; '
                     'export one with gcad_jax.models.teacher_weights.save_teacher_params')
  if not path.is_file():
    raise FileNotFoundError(f'teacher weights {path} do not exist (config field teacher.init)')
  try:
    raw = serialization.msgpack_restore(path.read_bytes())
  except Exception as e:  # msgpack raises several types for a file of another format
    raise ValueError(f'{path}: not a flax msgpack teacher file ({type(e).__name__}: {e})') from e
  if isinstance(raw, dict) and raw.get('format') == FORMAT:
    return {'p': int(raw['p']), 'params': raw['params'], 'meta': json.loads(raw.get('meta') or '{}')}
  if isinstance(raw, dict) and isinstance(raw.get('params'), dict) and 'teacher' in raw['params']:
    return {'p': None, 'params': raw['params']['teacher'], 'meta': {'step': int(raw.get('step', -1))}}
  raise ValueError(f'{path}: a msgpack file, but neither a teacher file ({FORMAT}) nor a distill checkpoint')


def _check_shapes(loaded: Any, template: Any, source: str) -> Any:
  flat_t = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_flatten_with_path(template)[0]}
  flat_l = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_flatten_with_path(loaded)[0]}
  if set(flat_t) != set(flat_l):
    missing, extra = sorted(set(flat_t) - set(flat_l)), sorted(set(flat_l) - set(flat_t))
    raise ValueError(f'{source}: parameter names differ from the model\'s: missing {missing[:4]}, unexpected '
                     f'{extra[:4]} (is it a teacher for this p and eloc.widths?)')
  for k, t in flat_t.items():
    if tuple(np.shape(flat_l[k])) != tuple(np.shape(t)):
      raise ValueError(f'{source}: parameter {k} has shape {tuple(np.shape(flat_l[k]))}, the model expects '
                       f'{tuple(np.shape(t))}; the teacher was made with other eloc.widths/d_loc or another p')
  # float16 files widen to the model's parameter dtype (float32); `t` may be an array or a ShapeDtypeStruct.
  return jax.tree_util.tree_map(lambda l, t: np.asarray(l).astype(getattr(t, 'dtype', np.float32)),
                                loaded, template)


def load_teacher_params(init: str, p: int, template: Any) -> Any:
  """E_loc params for `config.teacher.init`: 'shipped', 'random' (returns `template`) or a file path (`{p}`
  in it is replaced by p: `teacher_path`).

  `template` is the PatchTeacher's params tree (arrays or ShapeDtypeStructs); the loaded tree must match
  it in names and shapes, else a ValueError says which parameter differs.
  """
  if init == 'random':
    return template
  path = teacher_path(init, p)
  if init == 'shipped' and not path.is_file():
    raise FileNotFoundError(f'no shipped teacher for p={p} ({path} is missing): this build of gcad_jax has '
                            'none; distil one (python -m gcad_jax.distill --p ...) and pass its path')
  data = read_teacher_file(path)
  if data['p'] is not None and data['p'] != p:
    raise ValueError(f'{path}: holds a teacher for p={data["p"]}, but p={p} was asked for (config field '
                     'teacher.init; for several scales write {p} where the path names the patch size, e.g. '
                     'runs/teacher_p{p}/teacher_p{p}.msgpack)')
  return _check_shapes(data['params'], template, str(path))


def teacher_meta(init: str, p: int) -> dict[str, Any]:
  """The run description stored with a teacher file ('shipped' or a path)."""
  return read_teacher_file(teacher_path(init, p))['meta']
