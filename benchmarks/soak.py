"""Soak test of crash-safe training (issue 7, docs/reliability.md): random kills, resume, compare.

  python benchmarks/soak.py --kills 15 [--seed 0] [--epochs 4] [--workdir /tmp/gcad_soak]

Runs `gcad_jax.main --mode=train_and_eval` on configs/tiny.py (through tests/train_worker.py: fixed fake
images, 8 fake CPU devices, scoring off, so the metrics are the validation losses) once uninterrupted, the
reference. Then it runs the same command again and again, each time interrupting it at a random moment:

  kill        SIGKILL after a random delay (3 in 4 during the train steps and their checkpoint writes,
              the rest during evaluation; calibrated on the reference run)
  in_save     SIGKILL inside a checkpoint write: every file written, the step folder not yet renamed
  in_eval     SIGKILL while validation_losses.json is written (its hidden temporary exists)
  term        SIGTERM after a random delay (in the loop: save the step and exit 143; else the default)

and restarts the same command until it finishes; a finished run is compared with the reference, bitwise
(every array of the final checkpoint, and validation_losses.json), then a fresh run begins. Prints each
interruption, and runs, kill points, resumes, corrupt-checkpoint warnings and mismatches (expected 0).
Everything runs from a copy of the code taken at the start (`<workdir>/code`), so edits to the checkout
during the soak cannot change its runs.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=8'  # As the worker, for restoring.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # noqa: E402

CODE = ROOT  # The snapshot the runs use (main).
MODES = ('kill', 'in_save', 'in_eval', 'term')
WEIGHTS = (0.45, 0.2, 0.15, 0.2)


def _snapshot(base: pathlib.Path) -> pathlib.Path:
  """Copies the code the soak runs (gcad_jax, tfds_loco, configs, the worker) to base/code; returns it."""
  code = base / 'code'
  for name in ('gcad_jax', 'tfds_loco', 'configs'):
    shutil.copytree(ROOT / name, code / name, ignore=shutil.ignore_patterns('__pycache__'))
  (code / 'tests').mkdir()
  shutil.copy(ROOT / 'tests' / 'train_worker.py', code / 'tests')
  sys.path[:0] = [str(code), str(code / 'tests')]
  return code


def _command(workdir: pathlib.Path, epochs: int) -> list[str]:
  return [sys.executable, str(CODE / 'tests' / 'train_worker.py'), f'--config={CODE / "configs" / "tiny.py"}',
          f'--workdir={workdir}', '--mode=train_and_eval', '--config.score.enabled=False',
          f'--config.train.epochs={epochs}', '--config.train.log_every_steps=1']


def _env(cache_dir: str) -> dict:
  return dict(os.environ, JAX_COMPILATION_CACHE_DIR=cache_dir, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0.5')


def _steps(workdir: pathlib.Path) -> list[int]:
  ckpt = workdir / 'p17' / 'checkpoints'
  return sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit()) if ckpt.is_dir() else []


def _temporaries(workdir: pathlib.Path) -> set[str]:
  ckpt = workdir / 'p17' / 'checkpoints'
  return {p.name for p in ckpt.iterdir() if 'orbax-checkpoint-tmp' in p.name} if ckpt.is_dir() else set()


def _logged_at(log: str, step: int, total_steps: int, launched: float) -> float:
  """Seconds from the launch to the log line of train step `step` (absl's local-time stamps)."""
  match = re.search(rf'^[IWE]\d{{4}} (\d\d):(\d\d):(\d\d\.\d+) .* step {step}/{total_steps}:', log, re.M)
  start = datetime.datetime.fromtimestamp(launched)
  since_midnight = start.hour * 3600 + start.minute * 60 + start.second + start.microsecond / 1e6
  return float(match[1]) * 3600 + float(match[2]) * 60 + float(match[3]) - since_midnight


def _where(log: str, workdir: pathlib.Path, total_steps: int, temporaries: set[str]) -> str:
  """Roughly where the process was when it died, from its log and the folders it left."""
  if _temporaries(workdir) - temporaries:
    return 'checkpoint write'
  if f'step {total_steps}/{total_steps}' in log or 'already trained' in log:
    return 'evaluation'
  if f'/{total_steps}: total' in log:
    return 'training'
  return 'startup'


def _run(command, env, log_path: pathlib.Path, mode: str | None, delay: float, hook: dict) -> tuple[int, str]:
  with open(log_path, 'w') as log:
    proc = subprocess.Popen(command, env=dict(env, **hook), cwd=CODE, stdout=log, stderr=subprocess.STDOUT)
    try:
      proc.wait(timeout=delay if mode in ('kill', 'term') else 900)
    except subprocess.TimeoutExpired:
      proc.send_signal(signal.SIGKILL if mode == 'kill' else signal.SIGTERM)
      proc.wait(timeout=300)
  return proc.returncode, log_path.read_text()


def _final(workdir: pathlib.Path):
  """(final host state, validation losses) of a finished run."""
  import train_worker  # pylint: disable=g-import-not-at-top
  config = train_worker.load_config(CODE / 'configs' / 'tiny.py', {'score.enabled': False})
  state = train_worker.restore_final(config, workdir, 17)
  return state, json.loads((workdir / 'p17' / 'validation_losses.json').read_text())


def _equal(a, b) -> bool:
  import jax  # pylint: disable=g-import-not-at-top
  if jax.tree.structure(a[0]) != jax.tree.structure(b[0]):
    return False
  return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a[0]), jax.tree.leaves(b[0]))) and a[1] == b[1]


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--kills', type=int, default=15, help='interruptions in total')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--epochs', type=int, default=4, help='tiny config epochs (2 steps each)')
  parser.add_argument('--workdir', default='/tmp/gcad_soak')
  parser.add_argument('--cache_dir', default=str(pathlib.Path.home() / '.cache' / 'gcad_jax' / 'jax_cache'))
  args = parser.parse_args()
  rng = np.random.default_rng(args.seed)
  base = pathlib.Path(args.workdir)
  shutil.rmtree(base, ignore_errors=True)
  base.mkdir(parents=True)
  global CODE
  CODE = _snapshot(base)
  env, total_steps, started = _env(args.cache_dir), 2 * args.epochs, time.time()

  # The reference runs twice: the first fills the compilation cache, the second gives the timings the random
  # delays are drawn from (and both must agree).
  code, _ = _run(_command(base / 'warmup', args.epochs), env, base / 'warmup.log', None, 0, {})
  t0 = time.time()
  code, log = _run(_command(base / 'reference', args.epochs), env, base / 'reference.log', None, 0, {})
  reference_s = time.time() - t0
  if code != 0:
    print(log[-3000:])
    raise SystemExit(f'the reference run failed (exit {code})')
  reference = _final(base / 'reference')
  if not _equal(_final(base / 'warmup'), reference):
    raise SystemExit('two uninterrupted runs differ: the training is not deterministic here')
  first_s, last_s = _logged_at(log, 1, total_steps, t0), _logged_at(log, total_steps, total_steps, t0)
  print(f'reference: {total_steps} steps + evaluation in {reference_s:.1f} s (steps logged from {first_s:.1f} '
        f'to {last_s:.1f} s)', flush=True)

  runs = kills = resumes = launches = corrupt = mismatches = finished = 0
  where_counts: dict[str, int] = {}
  workdir = None
  while kills < args.kills or workdir is not None:
    if workdir is None:
      runs += 1
      workdir = base / f'run{runs}'
    mode = None if kills >= args.kills else str(rng.choice(MODES, p=WEIGHTS))
    steps = _steps(workdir)
    hook, delay = {}, 0.0
    if mode in ('kill', 'term'):
      # Three in four during the steps still to run (and their checkpoint writes), the rest in evaluation.
      end = first_s + (last_s - first_s) * (total_steps - (steps[-1] if steps else 0)) / total_steps
      window = (0.9 * first_s, end) if rng.random() < 0.75 else (end, end + reference_s - last_s)
      delay = float(rng.uniform(*window))
    elif mode == 'in_save':
      later = [s for s in range(2, total_steps + 1, 2) if not steps or s > steps[-1]]
      if not later:
        mode = 'in_eval'
      else:
        hook = {'GCAD_TEST_KILL_IN_SAVE': str(int(rng.choice(later)))}
    if mode == 'in_eval':
      hook = {'GCAD_TEST_KILL_IN_EVAL': '1'}
    launches += 1
    temporaries = _temporaries(workdir)
    code, log = _run(_command(workdir, args.epochs), env, base / f'launch{launches}.log', mode, delay, hook)
    resumed = 'resumed from' in log
    resumes += resumed
    corrupt += log.count('is corrupt or incomplete')
    if code == 0:
      same = _equal(_final(workdir), reference)
      mismatches += not same
      finished += 1
      print(f'  launch {launches:3d} run {runs}: {"resumed" if resumed else "fresh  "} finished: '
            f'{"identical to the reference" if same else "MISMATCH"}', flush=True)
      workdir = None
      continue
    kills += 1
    where = _where(log, workdir, total_steps, temporaries)
    where_counts[where] = where_counts.get(where, 0) + 1
    detail = f'after {delay:.1f} s' if mode in ('kill', 'term') else json.dumps(hook)
    print(f'  launch {launches:3d} run {runs}: {"resumed" if resumed else "fresh  "} {mode:7s} {detail:34s} exit '
          f'{code:4d} in {where:16s} checkpoints now {_steps(workdir)}', flush=True)
    if code not in (-signal.SIGKILL, -signal.SIGTERM, 143):
      print(log[-3000:])
      raise SystemExit(f'launch {launches} failed with exit {code}: {base / f"launch{launches}.log"}')
  print(f'soak: runs {runs}, kill points {kills} ({", ".join(f"{k} {v}" for k, v in sorted(where_counts.items()))}), '
        f'resumes {resumes}, launches {launches}, finished {finished}, corrupt-checkpoint warnings {corrupt}, '
        f'mismatches {mismatches}; {time.time() - started:.0f} s', flush=True)
  return 1 if mismatches else 0


if __name__ == '__main__':
  sys.exit(main())
