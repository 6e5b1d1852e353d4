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


def write_run_files(config, workdir) -> dict:
  """workdir/config.json (the resolved config) and workdir/provenance.json."""
  workdir = epath.Path(workdir)
  write_json(workdir / 'config.json', json.loads(config.to_json_best_effort()))
  info = provenance(config)
  write_json(workdir / 'provenance.json', info)
  return info


# Config fields that fix what a workdir's checkpoints were trained on: resuming or evaluating under a config
# that differs in one of them is refused (issue 7). Scoring, export and schedule fields may differ.
RUN_KEYS = ('dataset.category', 'dataset.image_size', 'dataset.resize_method', 'dataset.normalize') + MODEL_KEYS


def _differences(saved, now, key: str) -> list[tuple[str, Any, Any]]:
  if isinstance(saved, dict) and isinstance(now, dict):
    return [d for k in sorted(set(saved) | set(now)) for d in _differences(saved.get(k), now.get(k), f'{key}.{k}')]
  return [] if saved == now else [(key, saved, now)]


def _lookup(tree: dict, key: str):
  for part in key.split('.'):
    tree = tree.get(part) if isinstance(tree, dict) else None
  return tree


def check_same_run(config, workdir) -> None:
  """Refuses a config whose RUN_KEYS differ from workdir/config.json (the config that trained it)."""
  path = epath.Path(workdir) / 'config.json'
  if not path.exists():
    return
  saved, now = json.loads(path.read_text()), json.loads(config.to_json_best_effort())
  differing = [d for key in RUN_KEYS for d in _differences(_lookup(saved, key), _lookup(now, key), key)]
  if differing:
    key, was, is_now = differing[0]
    raise configlib.ConfigError(
        f'config.{key}: {workdir} was trained with {was!r} (see {path}), this config has {is_now!r} '
        f'({len(differing)} field(s) differ: {[d[0] for d in differing[:5]]}). Use the config in {path}, or '
        'another --workdir.')
