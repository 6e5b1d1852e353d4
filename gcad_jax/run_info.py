"""The record of a run in its workdir: `config.json`, `provenance.json`, the layout, and the same-run checks.

  workdir/config.json        the resolved config of the run that first trained here (kept on resume)
  workdir/provenance.json    code, packages, devices, host CPU, seed and times of that run
  workdir/p<p>/              one folder per receptive field p (checkpoints, events, validation losses)

Resuming or evaluating a workdir under a config that differs in a field that fixes the trained networks
(RUN_KEYS), or resuming its training under another seed, optimiser or schedule (RESUME_KEYS), is refused with
an error naming the field (issue 7).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from importlib import metadata as importlib_metadata
from typing import Any

import jax
from etils import epath

from gcad_jax import atomic_io, configlib, xla_cpu

# Config sections that fix the shapes of the networks: a checkpoint only resumes under the same values.
MODEL_KEYS = ('model', 'eloc', 'eglo', 'u', 'unet')


def scale_dir(workdir, p: int) -> epath.Path:
  """workdir/p<p>: the folder of the model of receptive field p."""
  return epath.Path(workdir) / f'p{p}'


def model_config(config) -> dict:
  """The MODEL_KEYS sections and the image size, as saved with every checkpoint."""
  return {k: config[k].to_dict() for k in MODEL_KEYS} | {'image_size': list(config.dataset.image_size)}


def _git_commit() -> str | None:
  here = os.path.dirname(os.path.abspath(__file__))
  try:
    out = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=here, capture_output=True, text=True, timeout=10)
  except (OSError, subprocess.SubprocessError):
    return None
  return out.stdout.strip() or None if out.returncode == 0 else None


def _host_cpu() -> str:
  """The CPU model and its widest SIMD extension, from /proc/cpuinfo (Linux); else `platform.processor()`.

  Recorded because one config and seed trained on two hosts drifted apart (docs/quality.md).
  """
  cpu = xla_cpu.cpuinfo()
  if not cpu:
    return platform.processor()
  flags = set(cpu.get('flags', '').split())
  simd = next((f for f in ('avx512f', 'avx2', 'avx', 'sse4_2') if f in flags), 'none')
  return f"{cpu.get('model name', platform.processor())} ({simd})"


def provenance(config) -> dict:
  """Code, packages, devices, host CPU, XLA flags, processes and seed of this run (next to the checkpoints)."""
  packages = {}
  for name in ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'clu', 'numpy', 'ml_collections',
               'tensorflow-datasets', 'gcad_jax'):
    try:
      packages[name] = importlib_metadata.version(name)
    except importlib_metadata.PackageNotFoundError:
      packages[name] = None
  return {'git_commit': _git_commit(), 'python': platform.python_version(), 'packages': packages,
          'backend': jax.default_backend(), 'devices': [str(d) for d in jax.devices()],
          'device_kind': jax.devices()[0].device_kind, 'device_count': jax.device_count(),
          'process_count': jax.process_count(), 'seed': config.seed, 'parallel': config.parallel,
          'hostname': platform.node(), 'host_cpu': _host_cpu(), 'cpu_count': os.cpu_count(),
          'xla_flags': os.environ.get('XLA_FLAGS', ''), 'start_time': time.strftime('%Y-%m-%dT%H:%M:%S%z')}


def write_json(path: epath.Path, value) -> None:
  """Atomically (a hidden temporary name, then a rename: issue 7, item 5), on process 0."""
  if jax.process_index() == 0:
    atomic_io.write_json(path, value, indent=2, sort_keys=True, default=str)


def saved_config(workdir) -> dict | None:
  """workdir/config.json as a dict, fields retired since it was written dropped (configlib.RETIRED_KEYS);
  None where there is none. Every reader of a workdir's config goes through this."""
  path = epath.Path(workdir) / 'config.json'
  if not path.exists():
    return None
  return configlib.drop_retired_keys(json.loads(path.read_text()), str(path))


def write_run_files(config, workdir, resume: bool = False) -> dict:
  """workdir/config.json (the resolved config) and workdir/provenance.json; returns this run's provenance.

  A resume keeps the first run's config.json as it is, and adds its own provenance to the list
  `resumes` in provenance.json, after the first run's (`finish_run` completes it).
  """
  workdir = epath.Path(workdir)
  info = provenance(config)
  path = workdir / 'provenance.json'
  if not resume or not path.exists():
    write_json(workdir / 'config.json', json.loads(config.to_json_best_effort()))
    write_json(path, info)
    return info
  record = json.loads(path.read_text())
  record.setdefault('resumes', []).append(info)
  write_json(path, record)
  return info


def finish_run(workdir, info: dict, train_wall_s: float) -> None:
  """Adds the end time and training wall time to this run's entry of workdir/provenance.json."""
  path = epath.Path(workdir) / 'provenance.json'
  info.update(end_time=time.strftime('%Y-%m-%dT%H:%M:%S%z'), train_wall_s=round(train_wall_s, 2))
  record = json.loads(path.read_text()) if path.exists() else info
  resumes = record.get('resumes', [])
  if resumes and resumes[-1].get('start_time') == info['start_time']:
    resumes[-1] = info
  else:
    record = info
  write_json(path, record)


# Config fields that fix what a workdir's checkpoints were trained on: resuming or evaluating under a config
# that differs in one of them is refused (issue 7). Scoring, export and schedule fields may differ.
RUN_KEYS = ('dataset.category', 'dataset.image_size', 'dataset.resize_method') + MODEL_KEYS


def _differences(saved, now, key: str) -> list[tuple[str, Any, Any]]:
  if isinstance(saved, dict) and isinstance(now, dict):
    return [d for k in sorted(set(saved) | set(now)) for d in _differences(saved.get(k), now.get(k), f'{key}.{k}')]
  return [] if saved == now else [(key, saved, now)]


def _lookup(tree: dict, key: str):
  for part in key.split('.'):
    tree = tree.get(part) if isinstance(tree, dict) else None
  return tree


def _differing_fields(config, workdir, keys, free=()) -> list[tuple[str, Any, Any]]:
  """(field, saved, now) of each field under `keys`, except `free`, where `config` differs from workdir/config.json."""
  saved = saved_config(workdir)
  if saved is None:
    return []
  now = json.loads(config.to_json_best_effort())
  return [d for key in keys for d in _differences(_lookup(saved, key), _lookup(now, key), key) if d[0] not in free]


# Config fields whose change would make a resumed run another run (seed, optimiser, schedule, loss): resuming
# training under a config that differs in one of them is refused. These train.* fields only say how often to
# log and save, or where E_loc runs (bitwise the same result), and may change on a resume.
RESUME_KEYS = ('seed', 'optim', 'train')
RESUME_FREE = ('train.log_every_steps', 'train.checkpoint_every_steps', 'train.keep_checkpoints',
               'train.cache_eloc')


def check_same_training(config, workdir) -> None:
  """Refuses to resume the training in `workdir` with RESUME_KEYS that differ from workdir/config.json."""
  path = epath.Path(workdir) / 'config.json'
  differing = _differing_fields(config, workdir, RESUME_KEYS, RESUME_FREE)
  if differing:
    key, was, is_now = differing[0]
    raise configlib.ConfigError(
        f'config.{key}: the checkpoints in {workdir} were trained with {was!r} (see {path}), this config has '
        f'{is_now!r} ({len(differing)} field(s) differ: {[d[0] for d in differing[:5]]}); resuming would mix '
        f'two trainings. Resume with the config in {path}, or train in another --workdir.')


def check_same_run(config, workdir) -> None:
  """Refuses a config whose RUN_KEYS differ from workdir/config.json (the config that trained it)."""
  path = epath.Path(workdir) / 'config.json'
  differing = _differing_fields(config, workdir, RUN_KEYS)
  if differing:
    key, was, is_now = differing[0]
    raise configlib.ConfigError(
        f'config.{key}: {workdir} was trained with {was!r} (see {path}), this config has {is_now!r} '
        f'({len(differing)} field(s) differ: {[d[0] for d in differing[:5]]}). Use the config in {path}, or '
        'another --workdir.')
