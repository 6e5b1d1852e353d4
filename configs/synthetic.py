"""GCAD at CPU size on the embedded synthetic data set (the demo's config; any LOCO-layout folder works).

  python -m tfds_loco.synthetic --out data/synthetic --seed 0
  python -m gcad_jax.main --config=configs/synthetic.py --workdir=/tmp/w_syn

Another LOCO-layout folder: --config.dataset.manual_dir=/path/to/root --config.dataset.category=name.
An argument string sets the category, and `short` the demo's shorter schedule (SHORT_SCHEDULE):
--config=configs/synthetic.py:my_category, --config=configs/synthetic.py:synthetic_tray,short.
128×128 input, both of the paper's scales (p = 17, 33; maps averaged), the shipped pretrained teachers,
narrow E_glo and U-Nets, no augmentation, L_glo's gradient into E_glo ramped in over 20 epochs after the stage
switch, and a shorter schedule than the paper's whose stage switch and skip fade are scaled down with the
epochs (docs/method.md §7.3, §4.3) at 5x the paper's learning rate. Quality figures and the levers measured: docs/quality.md.
"""

from gcad_jax import configlib


# `./run.sh demo`'s schedule (the demo must end within 20 minutes on 2 cores): one scale (p = 17), 100 epochs,
# R_glo from 10, skips gone by 20, Adam 1e-3. The full schedule below beat it on all three scenes
# (docs/quality.md, Ablations).
SHORT_SCHEDULE = {'model.scales': (17,), 'train.epochs': 100, 'train.rglo_start_epoch': 10.0,
                  'eglo.skip_fade.end_epoch': 20.0, 'optim.learning_rate': 1e-3}


def get_config(argument: str = ''):
  """The CPU-sized config; `argument`: 'CATEGORY', 'short' or 'CATEGORY,short' (SHORT_SCHEDULE)."""
  parts = [part for part in argument.split(',') if part]
  short = 'short' in parts
  categories = [part for part in parts if part != 'short']
  if len(categories) > 1:
    raise ValueError(f'configs/synthetic.py: argument {argument!r} names more than one category')
  config = configlib.base_config()
  config.dataset.category = categories[0] if categories else 'synthetic_tray'
  config.dataset.manual_dir = 'data/synthetic'
  config.dataset.data_dir = 'data/tfds'
  config.dataset.image_size = (128, 128)
  # Both of the paper's scales, their maps averaged (docs/method.md §8 step 3) [P]; each scale is a full model.
  config.model.scales = (17, 33)
  # The shipped pretrained E_loc with L_glo's gradient ramped into E_glo over 20 epochs after the stage switch
  # [I]: without the ramp E_glo collapsed at the switch with this teacher; augmentation off, so E_loc runs once
  # per training image (train.cache_eloc). Figures for each choice: docs/quality.md, Ablations.
  config.eloc.widths = (128, 256, 256)
  config.eloc.d_loc = 128
  config.teacher.init = 'shipped'
  config.train.lglo_eglo_grad_ramp_epochs = 20.0
  config.augment.enabled = False
  config.train.cache_eloc = True
  config.eglo.g = 16
  config.eglo.d_glo = 8
  config.eglo.enc_channels = (16, 16, 32, 32, 32, 32)
  config.eglo.dec_channels = (32, 32, 32, 32, 16, 16, 16)
  config.u.hidden = (32, 32)
  config.unet.depth = 4
  config.unet.wf = 4
  # The paper's 500 epochs (R_glo from 50, skips gone at 100) in the same proportions over 200 epochs: 1,400
  # steps per scale, about 22 minutes per scale on 2 cores.
  config.train.epochs = 200
  config.train.rglo_start_epoch = 20.0
  config.eglo.skip_fade.end_epoch = 40.0
  config.train.batch_size = 8
  # [I] 5x the paper's Adam step for 1,400 instead of ~11,000 steps (1e-4 and 1e-3: docs/quality.md, Ablations).
  config.optim.learning_rate = 5e-4
  config.train.checkpoint_every_steps = 50
  config.train.log_every_steps = 10
  if short:
    config.update_from_flattened_dict(SHORT_SCHEDULE)
  return config
