"""A tiny GCAD for tests: 64² input, widths 8–16, 3 epochs, R_glo from epoch 1, skips gone by epoch 2.

  python -m gcad_jax.main --config=configs/tiny.py --workdir=/tmp/w_tiny

(the synthetic data set of configs/synthetic.py; tests/train_worker.py runs it on fixed fake images).
"""

from gcad_jax import configlib


def get_config():
  """The tiny config (docs/method.md shapes, all widths shrunk)."""
  config = configlib.base_config()
  config.dataset.category = 'synthetic_tray'
  config.dataset.manual_dir = 'data/synthetic'
  config.dataset.data_dir = 'data/tfds'
  config.dataset.image_size = (64, 64)
  config.model.scales = (17,)
  config.eloc.widths = (16, 16, 16)
  config.eloc.d_loc = 16
  config.teacher.init = 'random'  # the shipped teachers have the paper's widths
  config.eglo.g = 8
  config.eglo.d_glo = 4
  config.eglo.enc_channels = (8, 8, 8, 8, 8, 8)
  config.eglo.dec_channels = (8, 8, 8, 8, 8, 8, 8)
  config.eglo.skip_fade.end_epoch = 2.0
  config.u.hidden = (16, 16)
  config.unet.depth = 3
  config.unet.wf = 3
  config.train.epochs = 3
  config.train.batch_size = 8
  config.train.rglo_start_epoch = 1.0
  config.train.checkpoint_every_steps = 2
  config.train.keep_checkpoints = 2
  config.train.log_every_steps = 2
  return config
