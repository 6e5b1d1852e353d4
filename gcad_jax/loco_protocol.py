"""The paper's protocol in one command: every category × seed, then Tables 3, 5 and 6 (docs/method.md §10.1),
or on MVTec AD Tables 8 and 9 (docs/method.md §10.2, `--benchmark mvtec_ad`).

  ./run.sh loco MANUAL_DIR [WORKDIR] [--seeds 0,1,2]
  ./run.sh mvtec_ad MANUAL_DIR [WORKDIR] [--seeds 0,1,2]     (= --benchmark mvtec_ad: configs/mvtec_ad.py, all 15)
  python -m gcad_jax.loco_protocol MANUAL_DIR [WORKDIR] [--seeds 0,1,2] [--categories a,b]
      [--benchmark loco|mvtec_ad] [--config configs/loco.py] [--config_override key=value ...] [--in_process]

For each seed s and category c (default: the five real categories, which must all be in MANUAL_DIR), runs
`--mode=train_and_eval` of `--config` (default configs/loco.py: 256², 500 epochs, both scales p = 17, 33,
fused, docs/method.md §8 step 3) into WORKDIR/seed<s>/<c>, then writes WORKDIR/report.md: the tables of
`gcad_jax.report` over all finished runs, mean ± std over seeds, the paper's GCAD figures beside ours.

Resumable: a finished run (WORKDIR/seed<s>/<c>/protocol_done.json) is skipped; an interrupted one resumes
from its last checkpoints (train.py). A run that fails is reported and the others go on; the exit status
is 1 then. `--config_override dataset.data_dir=/x` is `--config.dataset.data_dir=/x` of gcad_jax.main, for
every run; seed, dataset.category and dataset.manual_dir are set by the protocol.

Isolation: each run is a `python -m gcad_jax.main` subprocess (default). A real category holds a few GB of
full-resolution maps on the host and the whole accelerator memory; a fresh process returns both, and an
out-of-memory kill or an XLA abort ends one run, not the protocol. The cost, imports and compilations per run
(seconds, against hours of training), the persistent compilation cache (JAX_COMPILATION_CACHE_DIR, default
~/.cache/gcad_jax/jax_cache) mostly saves. `--in_process` calls `train.train_and_evaluate` in this process
instead: for tiny configs, where start-up dominates (tests).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import inspect
import json
import os
import pathlib
import re
import subprocess
import sys
import time
import traceback
from typing import Sequence

from gcad_jax import atomic_io

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = 'configs/loco.py'


@dataclasses.dataclass(frozen=True)
class Benchmark:
  """A data set the protocol runs: its default config, its layout and the paper's tables it reports."""
  title: str
  config: str
  dataset_format: str
  section: str


BENCHMARKS = {
    'loco': Benchmark('MVTec LOCO AD', DEFAULT_CONFIG, 'loco', 'docs/method.md §10.1'),
    'mvtec_ad': Benchmark('MVTec AD', 'configs/mvtec_ad.py', 'mvtec_ad', 'docs/method.md §10.2'),
}
DONE_FILE = 'protocol_done.json'
SETTINGS_FILE = 'protocol.json'
LOG_FILE = 'protocol.log'
REPORT_FILE = 'report.md'
# Set by the protocol per run; an override of them would contradict the protocol's own arguments.
RESERVED = ('seed', 'dataset.category', 'dataset.manual_dir', 'dataset.format')
# absl lines of a child worth echoing: train.py's progress and the evaluation's summary (the rest: LOG_FILE).
_ABSL = re.compile(r'^([IWEF])\d{4} [\d:.]+\s+\d+ ([\w.]+):\d+\] (.*)$')
_ECHO = ('train.py', 'assess.py')


class ProtocolError(ValueError):
  """A protocol argument that cannot work; the message says which and how to fix it."""


@dataclasses.dataclass(frozen=True)
class Run:
  """One (seed, category) of the protocol and its workdir."""
  seed: int
  category: str
  workdir: pathlib.Path

  @property
  def name(self) -> str:
    return f'seed {self.seed} {self.category}'


# ------------------------------------------------------------------------------------------------
# Arguments and configs.


def parse_seeds(text: str) -> list[int]:
  try:
    seeds = [int(s) for s in text.split(',') if s.strip()]
  except ValueError:
    raise ProtocolError(f'--seeds {text!r}: give comma-separated non-negative integers, e.g. 0,1,2') from None
  if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
    raise ProtocolError(f'--seeds {text!r}: give distinct non-negative integers, e.g. 0,1,2')
  return seeds


def resolve_categories(manual_dir, requested: Sequence[str] | None, benchmark: str = 'loco') -> list[str]:
  """The requested categories (default: the benchmark's real ones), all of which must be in `manual_dir`."""
  if benchmark == 'mvtec_ad':
    return _resolve_mvtec_ad(manual_dir, requested)
  from gcad_jax import configlib  # pylint: disable=g-import-not-at-top
  from tfds_loco import layout  # pylint: disable=g-import-not-at-top
  found = layout.find_categories(manual_dir)
  wanted = list(requested) if requested else list(configlib.REAL_CATEGORIES)
  missing = [c for c in wanted if c not in found]
  if missing:
    what = 'the real MVTec LOCO AD categories ' if not requested else ''
    raise ProtocolError(
        f'{what}{", ".join(missing)} not found under {manual_dir} (categories with a defects_config.json '
        f'there: {", ".join(sorted(found)) or "none"}); pass the extracted MVTec LOCO AD root, or '
        '--categories to run a subset')
  return wanted


def _resolve_mvtec_ad(manual_dir, requested: Sequence[str] | None) -> list[str]:
  """MVTec AD's categories (default: all 15), each found under manual_dir (the archive is extracted first)."""
  from tfds_loco import categories, layout  # pylint: disable=g-import-not-at-top
  from tfds_loco.mvtec_ad import mvtec_ad_dataset_builder  # pylint: disable=g-import-not-at-top
  wanted = list(requested) if requested else list(categories.MVTEC_AD_CATEGORIES)
  for category in wanted:
    try:
      mvtec_ad_dataset_builder.locate_category(manual_dir, category)
    except layout.LocoFormatError as e:
      raise ProtocolError(f'MVTec AD category {category}: {e}; pass the extracted MVTec AD root (or the folder '
                          'holding mvtec_anomaly_detection.tar.xz), or --categories to run a subset') from e
  return wanted


def resolve_config_path(path: str) -> pathlib.Path:
  """`path` as given, else relative to the repository (so configs/loco.py works from any folder)."""
  for candidate in (pathlib.Path(path), ROOT / path):
    if candidate.is_file():
      return candidate.resolve()
  raise ProtocolError(f'--config {path}: no such file (looked in {pathlib.Path.cwd()} and {ROOT})')


def parse_overrides(overrides: Sequence[str]) -> list[tuple[str, str]]:
  out = []
  for item in overrides:
    key, sep, value = item.partition('=')
    key = key.strip().removeprefix('--').removeprefix('config.')
    if not sep or not key:
      raise ProtocolError(f'--config_override {item!r}: write key=value, e.g. train.epochs=100')
    if key in RESERVED:
      raise ProtocolError(f'--config_override {item!r}: {key} is set by the protocol (use --seeds, '
                          '--categories or MANUAL_DIR)')
    out.append((key, value))
  return out


@functools.lru_cache(maxsize=None)
def _takes_argument(config_path: pathlib.Path) -> bool:
  """Whether the config file's get_config takes an argument string (configs/loco.py:category)."""
  from gcad_jax import configlib  # pylint: disable=g-import-not-at-top
  return bool(inspect.signature(configlib.config_module(config_path).get_config).parameters)


def main_flags(config_path: pathlib.Path, run: Run, manual_dir, overrides, dataset_format: str = 'loco') -> list[str]:
  """The `gcad_jax.main` flags of one run (the same flags build the in-process config); a benchmark other than
  LOCO also sets config.dataset.format."""
  spec = f'{config_path}:{run.category}' if _takes_argument(config_path) else str(config_path)
  fmt = [f'--config.dataset.format={dataset_format}'] if dataset_format != 'loco' else []
  return [f'--config={spec}', *(f'--config.{k}={v}' for k, v in overrides), *fmt,
          f'--config.dataset.category={run.category}', f'--config.dataset.manual_dir={manual_dir}',
          f'--config.seed={run.seed}']


def build_config(flag_args: Sequence[str]):
  """The ConfigDict that `gcad_jax.main` would build from `flag_args`, validated (configlib.validate)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  from gcad_jax import configlib  # pylint: disable=g-import-not-at-top
  argv = ['loco_protocol', *flag_args]
  values = flags.FlagValues()
  try:
    # sys_argv: the --config.* override flags are defined from this argv, not from sys.argv.
    config_flags.DEFINE_config_file('config', None, 'Config file.', flag_values=values, lock_config=True,
                                    sys_argv=argv)
    values(argv)
  except (flags.Error, ValueError, AttributeError, KeyError, TypeError) as e:
    reason = str(e).strip().splitlines()[-1]  # config_flags puts the config file's traceback first
    if isinstance(e, (KeyError, AttributeError)):
      reason = f'no such config field {reason}'
    raise ProtocolError(f'{flag_args[0]} {" ".join(flag_args[1:])}: {reason}') from None
  return configlib.validate(values.config)


def check_settings(workdir: pathlib.Path, settings: dict) -> None:
  """WORKDIR/protocol.json: refuses to mix runs of other configs, overrides or data in one WORKDIR."""
  path = workdir / SETTINGS_FILE
  if path.is_file():
    saved = json.loads(path.read_text())
    differing = [k for k in ('config', 'overrides', 'manual_dir') if saved.get(k) != settings[k]]
    if differing:
      what = '; '.join(f'{k}: {saved.get(k)!r} then, {settings[k]!r} now' for k in differing)
      raise ProtocolError(f'{workdir} holds runs of other settings ({what}); use the same --config, '
                          '--config_override and MANUAL_DIR to resume, or a fresh WORKDIR')
  atomic_io.write_json(path, settings, indent=2)


# ------------------------------------------------------------------------------------------------
# One run.


def is_done(run: Run) -> bool:
  return (run.workdir / DONE_FILE).is_file() and (run.workdir / 'metrics.json').is_file()


def _echo(line: str, prefix: str) -> None:
  match = _ABSL.match(line)
  if match and (match.group(2) in _ECHO or match.group(1) in 'EF'):
    print(f'{prefix} {match.group(3)}', flush=True)


def run_subprocess(run: Run, flag_args: Sequence[str], prefix: str) -> None:
  """`python -m gcad_jax.main --mode=train_and_eval ...` for one run; its output goes to W/protocol.log."""
  run.workdir.mkdir(parents=True, exist_ok=True)
  env = dict(os.environ)
  env.setdefault('JAX_COMPILATION_CACHE_DIR', str(pathlib.Path.home() / '.cache' / 'gcad_jax' / 'jax_cache'))
  command = [sys.executable, '-m', 'gcad_jax.main', f'--workdir={run.workdir}', '--mode=train_and_eval',
             *flag_args]
  log_path = run.workdir / LOG_FILE
  with log_path.open('a') as log:
    log.write(f'\n# {datetime.datetime.now().isoformat(timespec="seconds")}: {" ".join(command)}\n')
    log.flush()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                             bufsize=1)
    tail = []
    for line in child.stdout:
      log.write(line)
      _echo(line.rstrip('\n'), prefix)
      tail = (tail + [line.rstrip('\n')])[-25:]
    code = child.wait()
  if code:
    raise RuntimeError(f'gcad_jax.main exited with status {code}; the last lines of {log_path}:\n  '
                       + '\n  '.join(tail))


def run_in_process(run: Run, config) -> None:
  """train.train_and_evaluate in this process (persistent compilation cache on, unless set already)."""
  import jax  # pylint: disable=g-import-not-at-top
  from gcad_jax import parallel, train  # pylint: disable=g-import-not-at-top
  if not jax.config.jax_compilation_cache_dir:
    jax.config.update('jax_compilation_cache_dir',
                      str(pathlib.Path.home() / '.cache' / 'gcad_jax' / 'jax_cache'))
  parallel.check_batch_size(config)
  train.train_and_evaluate(config, str(run.workdir), 'train_and_eval')


def _hms(seconds: float) -> str:
  return str(datetime.timedelta(seconds=int(round(seconds))))


def _summary(run: Run) -> str:
  from gcad_jax import report  # pylint: disable=g-import-not-at-top
  h = report.headline(json.loads((run.workdir / 'metrics.json').read_text()))
  return (f'AUC-sPRO@0.05 mean {report.fmt(h["spro"]["mean"])}, '
          f'image AUROC mean {report.fmt(h["auroc"]["mean"])}')


# ------------------------------------------------------------------------------------------------
# The report over all runs.


def write_report(workdir: pathlib.Path, runs: Sequence[Run], settings: dict,
                 failed: Sequence[tuple[Run, str]] = ()) -> pathlib.Path:
  """WORKDIR/report.md: gcad_jax.report's tables over the finished runs, with the protocol's settings."""
  from gcad_jax import benchmark_tables  # pylint: disable=g-import-not-at-top
  done = [r for r in runs if is_done(r)]
  overrides = ', '.join(f'`{o}`' for o in settings['overrides']) or 'none'
  benchmark = BENCHMARKS[settings.get('benchmark', 'loco')]
  lines = [f'# GCAD on {benchmark.title}: the paper protocol ({benchmark.section})', '',
           f'Config `{settings["config"]}`, overrides {overrides}; seeds {settings["seeds"]}; data '
           f'`{settings["manual_dir"]}`. Each run: `{workdir}/seed<s>/<category>/` (metrics.json, '
           'report.md, anomaly_maps/, plots/).', '']
  if done:
    lines.append(benchmark_tables.benchmark_tables([r.workdir for r in done], benchmark.dataset_format))
  pending = [r for r in runs if not is_done(r)]
  if pending:
    why = dict((r, msg) for r, msg in failed)
    lines += ['', f'Not in the tables ({len(pending)} of {len(runs)} runs):', '']
    lines += [f'- {r.name}: {why[r].splitlines()[0] if r in why else "not run yet"}' for r in pending]
  path = workdir / REPORT_FILE
  atomic_io.write_text(path, '\n'.join(lines).rstrip() + '\n')
  return path


# ------------------------------------------------------------------------------------------------
# The driver.


def run_protocol(manual_dir, workdir, seeds: Sequence[int] = (0, 1, 2), categories: Sequence[str] | None = None,
                 config: str | None = None, overrides: Sequence[str] = (), in_process: bool = False,
                 log=print, benchmark: str = 'loco') -> dict:
  """Trains and evaluates every (seed, category) not finished yet, then writes WORKDIR/report.md.

  Returns {'report': path, 'runs': [Run], 'failed': [(Run, message)], 'ran': [Run], 'skipped': [Run]}.
  """
  manual_dir = pathlib.Path(manual_dir).resolve()
  workdir = pathlib.Path(workdir).resolve()
  if benchmark not in BENCHMARKS:
    raise ProtocolError(f'--benchmark {benchmark!r}: use one of {list(BENCHMARKS)}')
  config_path = resolve_config_path(config or BENCHMARKS[benchmark].config)
  pairs = parse_overrides(overrides)
  categories = resolve_categories(manual_dir, categories, benchmark)
  runs = [Run(s, c, workdir / f'seed{s}' / c) for s in seeds for c in categories]
  flag_args = {r: main_flags(config_path, r, manual_dir, pairs, BENCHMARKS[benchmark].dataset_format) for r in runs}
  configs = {r: build_config(flag_args[r]) for r in runs}  # pre-flight: a bad override fails here, not later
  settings = {'config': str(config_path.relative_to(ROOT) if config_path.is_relative_to(ROOT) else config_path),
              'overrides': [f'{k}={v}' for k, v in pairs], 'manual_dir': str(manual_dir), 'seeds': list(seeds),
              'categories': list(categories), 'benchmark': benchmark}
  check_settings(workdir, settings)

  t0 = time.time()
  durations, failed, ran, skipped = [], [], [], []
  for i, r in enumerate(runs, 1):
    prefix = f'[{benchmark} {i}/{len(runs)} {r.name}]'
    if is_done(r):
      skipped.append(r)
      log(f'{prefix} finished earlier, skipped ({_summary(r)})')
      continue
    left = sum(not is_done(q) for q in runs[i - 1:])
    eta = _hms(sum(durations) / len(durations) * left) if durations else 'after the first run'
    resume = ' (resuming its checkpoints)' if any(r.workdir.glob('p*/checkpoints/*')) else ''
    log(f'{prefix} starting{resume}: elapsed {_hms(time.time() - t0)}, ETA {eta}, {r.workdir}')
    start = time.time()
    try:
      if in_process:
        run_in_process(r, configs[r])
      else:
        run_subprocess(r, flag_args[r], prefix)
    except Exception as e:  # pylint: disable=broad-except (one failed run must not stop the others)
      message = f'{type(e).__name__}: {e}'
      failed.append((r, message))
      log(f'{prefix} FAILED after {_hms(time.time() - start)}: {message}')
      if in_process:
        log(traceback.format_exc())
      continue
    seconds = time.time() - start
    durations.append(seconds)
    ran.append(r)
    atomic_io.write_json(r.workdir / DONE_FILE, {
        'seed': r.seed, 'category': r.category, 'seconds': round(seconds, 1), 'in_process': in_process,
        'finished': datetime.datetime.now().isoformat(timespec='seconds'), 'main_flags': flag_args[r]}, indent=2)
    log(f'{prefix} done in {_hms(seconds)}: {_summary(r)}')
  path = write_report(workdir, runs, settings, failed)
  log(f'[{benchmark}] {len(ran)} run, {len(skipped)} skipped, {len(failed)} failed in {_hms(time.time() - t0)}; '
      f'report: {path}')
  return {'report': path, 'runs': runs, 'failed': failed, 'ran': ran, 'skipped': skipped}


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog='python -m gcad_jax.loco_protocol', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('manual_dir', help='the extracted MVTec LOCO AD root (holds breakfast_box/, ...), or with '
                      '--benchmark mvtec_ad the MVTec AD root (bottle/, ...) or the folder holding its archive')
  parser.add_argument('workdir', nargs='?', default=None,
                      help='where the runs go (default runs/loco, or runs/mvtec_ad with --benchmark mvtec_ad)')
  parser.add_argument('--seeds', default='0,1,2',
                      help='comma-separated seeds (default 0,1,2: docs/method.md §7.3 asks for at least 3)')
  parser.add_argument('--categories', default=None,
                      help='comma-separated (default: the benchmark\'s real ones: 5 of LOCO, 15 of MVTec AD)')
  parser.add_argument('--benchmark', default='loco', choices=list(BENCHMARKS),
                      help='loco (Tables 3, 5, 6) or mvtec_ad (Tables 8, 9; configs/mvtec_ad.py)')
  parser.add_argument('--config', default=None,
                      help=f'config file (default {DEFAULT_CONFIG}; configs/mvtec_ad.py with --benchmark mvtec_ad)')
  parser.add_argument('--config_override', action='append', default=[], metavar='KEY=VALUE',
                      help='a config field for every run, e.g. train.epochs=100 (repeatable)')
  parser.add_argument('--in_process', action='store_true', help='no subprocess per run (tiny configs, tests)')
  args = parser.parse_args(argv)
  try:
    out = run_protocol(args.manual_dir, args.workdir or f'runs/{args.benchmark}', parse_seeds(args.seeds),
                       args.categories.split(',') if args.categories else None, args.config,
                       args.config_override, args.in_process, benchmark=args.benchmark)
  except (OSError, ValueError) as e:  # ProtocolError, layout.LocoFormatError, configlib.ConfigError
    print(f'error: {e}', file=sys.stderr)
    return 2
  return 1 if out['failed'] else 0


if __name__ == '__main__':
  sys.exit(main())
