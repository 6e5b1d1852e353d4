"""Trains and evaluates GCAD: `python -m gcad_jax.main --config=configs/synthetic.py --workdir=/tmp/w`.

Flags: --config (a config file, optionally `file.py:argument`, plus `--config.a.b=value` overrides),
--workdir, --mode=train|eval|train_and_eval|distill (distill: E_loc teacher pretraining with
configs/teacher_p*.py, docs/method.md §3.5), --distributed (multi-host: `jax.distributed.initialize()`).
"""

from absl import app, flags, logging
from ml_collections import config_flags

from gcad_jax import configlib, parallel, summaries, train, xla_cpu

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Config file (see configs/).', lock_config=True)
flags.DEFINE_string('workdir', None, 'Folder for checkpoints, logs and results.')
flags.DEFINE_enum('mode', 'train_and_eval', ['train', 'eval', 'train_and_eval', 'distill'], 'What to run.')
flags.DEFINE_bool('distributed', False, 'Call jax.distributed.initialize() (also config.distributed).')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Too many command-line arguments: {argv[1:]}')
  summaries.quiet_library_logs()  # One progress line per log interval; the rest at --verbosity=1.
  xla_cpu.set_cpu_xla_flags()  # Before JAX starts (docs/performance.md).
  if FLAGS.mode == 'distill':  # teacher pretraining (docs/method.md §3.5); needs only config.teacher and config.eloc
    from gcad_jax import distill  # pylint: disable=g-import-not-at-top
    distill.distill(FLAGS.config, FLAGS.workdir)
    return
  configlib.validate(FLAGS.config)
  parallel.maybe_initialize_distributed(FLAGS.config, force=FLAGS.distributed)
  parallel.check_batch_size(FLAGS.config)
  logging.debug('config:\n%s', FLAGS.config)  # Also written to <workdir>/config.json.
  train.train_and_evaluate(FLAGS.config, FLAGS.workdir, FLAGS.mode)


if __name__ == '__main__':
  app.run(main)
