"""Distils the p = 33 E_loc teacher (docs/method.md §3.5, §3.6): T̂ + linear decoder D against EfficientNet-Lite0.

  python -m gcad_jax.main --config=configs/teacher_p33.py --workdir=runs/teacher_p33 --mode=distill \
      --config.teacher.image_dir=/path/to/images

The paper's target instead (ImageNet + torchvision ResNet-18 weights you download):
  --config.teacher.target=resnet18 --config.teacher.target_weights=/path/to/resnet18-f37072fd.pth
Without ml_collections (e.g. on an accelerator machine with only jax/flax/optax/numpy/pillow):
  python -m gcad_jax.distill --p 33 --image_dir /path/to/images --workdir runs/teacher_p33
The architecture comes from config.eloc (docs/method.md §3.2); the result is runs/teacher_p33/teacher_p33.msgpack,
usable as config.teacher.init=/path/to/teacher_p33.msgpack
(or, with both scales, a path with {p} in place of the patch size).
"""

from gcad_jax import configlib


def get_config(p: str = '33'):
  """The distillation config of the p = 33 teacher (`configlib.teacher_distill_config`)."""
  return configlib.teacher_distill_config(int(p))
