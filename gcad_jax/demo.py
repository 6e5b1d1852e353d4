"""The demo behind `./run.sh demo`: the main job on the embedded synthetic data set, start to end.

  1. generate a synthetic LOCO-layout category (tfds_loco.synthetic) under data/synthetic/,
  2. build it as a TFDS data set (tfds_loco.build) under data/tfds/,
  3. train GCAD with configs/synthetic.py (gcad_jax.train) in work/demo/ and evaluate it: anomaly maps,
     metrics.json and report.md in work/demo/ (gcad_jax.assess); the report's path and the headline
     figures are printed at the end.

The demo trains the config's shorter schedule (`configs/synthetic.py:short`: one scale, p = 17, 100 epochs at
Adam 1e-3; about 15 minutes on 2 cores) so that it ends within 20 minutes; `--schedule full` trains the
config's own (both scales, 200 epochs at 5e-4, about 45 minutes of training), the one docs/quality.md
measures.

Every step is skipped when its output is already complete, so running the demo again resumes.
Usage: python -m gcad_jax.demo [--category synthetic_tray] [--seed 0] [--workdir work/demo]
                               [--schedule short|full] [--epochs N]
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _say(message: str) -> None:
  print(f'[demo] {message}', flush=True)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--category', default='synthetic_tray')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--data', default=str(ROOT / 'data'), help='folder for generated and built data')
  parser.add_argument('--workdir', default=str(ROOT / 'work' / 'demo'))
  parser.add_argument('--schedule', choices=('short', 'full'), default='short',
                      help="'short': configs/synthetic.py:short (the default; within 20 minutes on 2 cores); "
                           "'full': the config's own schedule")
  parser.add_argument('--epochs', type=int, default=None, help='override config.train.epochs')
  args = parser.parse_args(argv)

  from gcad_jax import xla_cpu

  xla_cpu.set_cpu_xla_flags()  # Before JAX starts (docs/performance.md).
  from absl import logging

  from tfds_loco import build as tfds_build
  from tfds_loco import synthetic

  from gcad_jax import configlib, summaries

  # Progress: training and evaluation log at INFO (absl shows only warnings without app.run); library
  # detail (Orbax's per-save lines, TFDS's build lines) is dropped as in main.py.
  logging.set_verbosity(logging.INFO)
  # As app.run does: absl's handler on the root logger, where the filter below sits. Without it absl's first
  # log call adds logging.basicConfig()'s handler, which prints every library line.
  logging.use_absl_handler()
  summaries.quiet_library_logs()

  start = time.time()
  data = pathlib.Path(args.data)
  manual_dir = data / 'synthetic'
  category_dir = manual_dir / args.category
  _say(f'step 1/3: synthetic data set {args.category!r} (seed {args.seed}) in {manual_dir}')
  if category_dir.is_dir():
    _say(f'  already there: {category_dir}')
  else:
    synthetic.generate(manual_dir, args.category, seed=args.seed)

  _say(f'step 2/3: TFDS data set in {data / "tfds"}')
  builder = tfds_build.build(category=args.category, manual_dir=str(manual_dir), data_dir=str(data / 'tfds'),
                             quiet=True)  # TFDS's own prints and progress bars break the log lines
  _say('  ' + ', '.join(f'{name}: {split.num_examples}' for name, split in builder.info.splits.items()))

  _say(f'step 3/3: train and evaluate GCAD with configs/synthetic.py in {args.workdir}')
  config_file = ROOT / 'configs' / 'synthetic.py'
  if not config_file.is_file():
    raise SystemExit(f'config file {config_file} not found; run the demo from a checkout of gcad_jax')
  config = configlib.load_config(f'{config_file}:short' if args.schedule == 'short' else config_file)
  hint = '; --schedule full trains the one docs/quality.md measures' if args.schedule == 'short' else ''
  _say(f'  schedule: {args.schedule} (scales {list(config.model.scales)}, {config.train.epochs} epochs, R_glo '
       f'from epoch {config.train.rglo_start_epoch:g}, skips gone by {config.eglo.skip_fade.end_epoch:g}, '
       f'Adam {config.optim.learning_rate:g}){hint}')
  config.dataset.category = args.category
  config.dataset.manual_dir = str(manual_dir)
  config.dataset.data_dir = str(data / 'tfds')
  config.seed = args.seed
  if args.epochs is not None and args.epochs != config.train.epochs:
    _say(f'  SHORTER SCHEDULE: {args.epochs} epochs instead of {config.train.epochs} (--epochs; the stage switch '
         'and skip fade stay where they were); figures are not those of the demo')
    config.train.epochs = args.epochs
  from gcad_jax import configlib
  from gcad_jax import train

  configlib.validate(config)
  results = train.train_and_evaluate(config, args.workdir)
  test = results.get('test') if isinstance(results, dict) else None
  if test:
    h = test['headline']
    fmt = lambda d: '  '.join(f'{k} {v:.3f}' if v is not None else f'{k} -' for k, v in d.items())
    _say(f'AUC-sPRO@0.05 (combined maps): {fmt(h["spro"])}   [paper GCAD, 5 real categories: structural 0.692  '
         'logical 0.711  mean 0.701]')
    _say(f'image AUROC   (combined maps): {fmt(h["auroc"])}   [paper GCAD: structural 0.806  logical 0.860  '
         'mean 0.833]')
    _say(f'evaluation took {test["seconds"]["total"]:.0f} s; maps in {test["maps_dir"]}')
    _say(f'report: {test["report"]}')
  _say(f'done in {time.time() - start:.0f} s; results in {args.workdir}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
