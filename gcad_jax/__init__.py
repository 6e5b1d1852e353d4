"""gcad_jax: GCAD (Bergmann et al., "Beyond Dents and Scratches", IJCV 2022) in JAX/Flax.

Importing the package is cheap: submodules load their dependencies themselves, so that the models, the
benchmark and the teacher distillation run on machines that only have jax, flax and optax.
"""

__version__ = '0.1.0.dev0'


def load(workdir, mesh=None):
  """The trained model of `workdir`, with `.score(images)` → (maps, scores) (`gcad_jax.predict.load`)."""
  from gcad_jax import predict  # pylint: disable=g-import-not-at-top (keeps `import gcad_jax` cheap)
  return predict.load(workdir, mesh)


def load_exported(folder, fmt=None):
  """An export of `python -m gcad_jax.export`, with `.serve(batch)` and `.score(images)`; needs numpy and the
  format's runtime only (`gcad_jax.exported.load_exported`)."""
  from gcad_jax import exported  # pylint: disable=g-import-not-at-top
  return exported.load_exported(folder, fmt)
