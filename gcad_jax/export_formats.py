"""Writers of the serving function (gcad_jax/serving.py) in each export format (docs/deploy.md).

Each writer takes the function, the input size (H, W) and the batch (an int, or None for a dynamic batch where
the format has one) and writes its files under the export folder; it returns the manifest entry of the format
(its files and what it supports). A format that cannot express a part of the model raises `FormatError` naming
the layer or primitive and the format; nothing is silently approximated.
"""

from __future__ import annotations

import logging
import pathlib
from typing import Callable, Sequence

import jax
import jax.numpy as jnp

from gcad_jax import atomic_io, onnx_lowering

STABLEHLO_FILE = 'model.stablehlo'
ONNX_FILE = 'model.onnx'
SAVED_MODEL_DIR = 'saved_model'
SIGNATURE = 'serving_default'


FormatError = onnx_lowering.FormatError


def input_spec(size: Sequence[int], batch: int | None) -> jax.ShapeDtypeStruct:
  """The (N, H, W, 3) uint8 input; N symbolic ('batch') when `batch` is None."""
  n = jax.export.symbolic_shape('batch')[0] if batch is None else int(batch)
  return jax.ShapeDtypeStruct((n, int(size[0]), int(size[1]), 3), jnp.uint8)


def write_stablehlo(fn: Callable, size, batch: int | None, out: pathlib.Path,
                    platforms: Sequence[str] = ('cpu',)) -> dict:
  """`jax.export` of the jitted function for `platforms`, serialised: runs with jax alone
  (`gcad_jax.load_exported`) on any of them."""
  exported = jax.export.export(jax.jit(fn), platforms=tuple(platforms))(input_spec(size, batch))
  atomic_io.write_bytes(out / STABLEHLO_FILE, bytes(exported.serialize()))
  return {'files': [STABLEHLO_FILE], 'batch': 'dynamic' if batch is None else int(batch),
          'platforms': list(exported.platforms), 'calling_convention_version': exported.calling_convention_version,
          'runtime': 'jax (jax.export.deserialize; no flax, TFDS or gcad_jax training code)'}


def write_saved_model(fn: Callable, size, batch: int | None, out: pathlib.Path,
                      platforms: Sequence[str] = ('cpu',)) -> dict:
  """A TF SavedModel (jax2tf) with the `serving_default` signature images → maps, scores, flags, threshold.

  The graph holds one XlaCallModule op (jax2tf's native serialisation): it runs in TensorFlow and TF Serving;
  TFLite and tf2onnx cannot convert that op. TensorFlow's saving sets absl's log level to WARNING for the
  whole process; it is put back afterwards.
  """
  absl_logger = logging.getLogger('absl')
  level = absl_logger.level
  try:
    return _saved_model(fn, size, batch, out, platforms)
  finally:
    absl_logger.setLevel(level)


def _saved_model(fn: Callable, size, batch: int | None, out: pathlib.Path, platforms: Sequence[str]) -> dict:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from jax.experimental import jax2tf  # pylint: disable=g-import-not-at-top
  shape = (None if batch is None else int(batch), int(size[0]), int(size[1]), 3)
  converted = jax2tf.convert(fn, polymorphic_shapes=['(b, ...)' if batch is None else None],
                             native_serialization_platforms=tuple(platforms), with_gradient=False)
  module = tf.Module()
  module.serve = tf.function(lambda images: converted(images), autograph=False,
                             input_signature=[tf.TensorSpec(shape, tf.uint8, name='images')])
  path = out / SAVED_MODEL_DIR
  tf.saved_model.save(module, str(path), signatures={SIGNATURE: module.serve})
  files = sorted(str(p.relative_to(out)) for p in path.rglob('*') if p.is_file())
  return {'files': files, 'batch': 'dynamic' if batch is None else int(batch), 'signature': SIGNATURE,
          'platforms': list(platforms),
          'runtime': 'tensorflow (tf.saved_model.load; TF Serving); one XlaCallModule op, so no TFLite'}


def write_onnx(fn: Callable, size, batch: int | None, out: pathlib.Path, platforms: Sequence[str] = ()) -> dict:
  """An ONNX model (opset 18) written by gcad_jax/onnx_lowering.py: runs in ONNX Runtime without JAX.

  Without a batch the input's batch dimension is dynamic (the lowering traces at two batch sizes).
  """
  del platforms  # ONNX Runtime picks its execution provider
  model = onnx_lowering.to_onnx(fn, input_spec(size, batch or 1), dynamic_batch=batch is None)
  atomic_io.write_bytes(out / ONNX_FILE, model.SerializeToString())
  return {'files': [ONNX_FILE], 'batch': 'dynamic' if batch is None else int(batch), 'opset': onnx_lowering.OPSET,
          'runtime': 'onnxruntime (CPUExecutionProvider); no JAX; examples/onnx_predict.py'}


PATHS = {'stablehlo': STABLEHLO_FILE, 'onnx': ONNX_FILE, 'saved_model': SAVED_MODEL_DIR}
WRITERS = {'stablehlo': write_stablehlo, 'onnx': write_onnx, 'saved_model': write_saved_model}
