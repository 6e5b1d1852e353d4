"""Loads an export of `python -m gcad_jax.export` and scores images with it (docs/deploy.md).

  model = gcad_jax.load_exported(DIR)            # DIR/manifest.json; the stablehlo format if it is there
  out = model.serve(images)                      # uint8 (N, H, W, 3) → {'maps', 'scores', 'flags', 'threshold'}
  maps, scores = model.score(list_of_images)     # as `gcad_jax.load(W).score`, at the export size only

Imports numpy and the format's runtime only (jax for stablehlo, onnxruntime for onnx, tensorflow for
saved_model): no flax, TFDS or training code. Before anything runs, the manifest is checked: its format version,
and the SHA-256 of every file it lists.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
from typing import Sequence

import numpy as np

MANIFEST = 'manifest.json'
FORMAT_VERSION = 1  # of the manifest and the exported function's signature; bumped on any incompatible change
OUTPUTS = ('maps', 'scores', 'flags', 'threshold')
# Image files: 8-bit RGB is used as it is; grey, palette and alpha images are converted to RGB (grey replicated,
# alpha dropped), as PIL's convert('RGB') does; other modes (16-bit, float, CMYK) are refused.
CONVERTED_MODES = ('1', 'L', 'LA', 'P', 'PA', 'RGBA', 'RGBX')


class ExportError(ValueError):
  """An export folder that cannot be used: missing, altered, or from an incompatible version."""


def sha256(path) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  return digest.hexdigest()


def read_manifest(folder) -> dict:
  """DIR/manifest.json, after checking its version and every listed file's SHA-256."""
  folder = pathlib.Path(folder)
  path = folder / MANIFEST
  if not path.is_file():
    raise ExportError(f'{path} is missing: {folder} is not a gcad_jax export (python -m gcad_jax.export)')
  manifest = json.loads(path.read_text())
  version = manifest.get('format_version')
  if version != FORMAT_VERSION:
    raise ExportError(f'{path}: export format version {version}, but this gcad_jax reads version '
                      f'{FORMAT_VERSION}; export the workdir again with this gcad_jax')
  for name, digest in manifest.get('files', {}).items():
    file = folder / name
    if not file.is_file():
      raise ExportError(f'{file} is listed in {path} but missing; copy the whole export folder')
    if sha256(file) != digest:
      raise ExportError(f'{file} does not match its SHA-256 in {path}: the file was altered or replaced; '
                        'export again, or copy the folder again')
  return manifest


def read_image(path) -> np.ndarray:
  """uint8 (H, W, 3) RGB of an image file; grey, palette and alpha images converted (CONVERTED_MODES)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with Image.open(path) as image:
    if image.mode not in ('RGB', *CONVERTED_MODES):
      raise ValueError(f'{path}: image mode {image.mode} is not converted (8-bit RGB, grey, palette or alpha '
                       'images are); save it as 8-bit RGB')
    return np.asarray(image.convert('RGB'))


class ExportedModel:
  """One format of an export: `serve` a uint8 batch, or `score` a list of images like `predict.Model`."""

  def __init__(self, folder, manifest: dict, fmt: str):
    self.folder, self.manifest, self.format = pathlib.Path(folder), manifest, fmt
    entry = manifest['formats'][fmt]
    self.batch = None if entry['batch'] == 'dynamic' else int(entry['batch'])
    self.image_size = tuple(manifest['input']['image_size'])
    self.threshold = float(manifest['threshold']['value'])
    self._run = _RUNNERS[fmt](self.folder, entry)

  def check(self, images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    want = (*self.image_size, 3)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != want:
      raise ValueError(f'the {self.format} export in {self.folder} takes uint8 (N, {want[0]}, {want[1]}, 3) RGB '
                       f'images; got {images.dtype} {images.shape}. Other sizes: export again with '
                       f'--image_size H,W')
    return images

  def serve(self, images: np.ndarray) -> dict[str, np.ndarray]:
    """{'maps', 'scores', 'flags', 'threshold'} of a uint8 (N, H, W, 3) batch; fixed batches padded/split."""
    images = self.check(images)
    if self.batch is None:
      return {k: np.asarray(v) for k, v in self._run(images).items()}
    parts = []
    for start in range(0, len(images), self.batch):
      chunk = images[start:start + self.batch]
      padded = np.concatenate([chunk, np.zeros((self.batch - len(chunk), *chunk.shape[1:]), np.uint8)])
      out = self._run(padded)
      parts.append({k: np.asarray(out[k])[:len(chunk)] for k in ('maps', 'scores', 'flags')})
    if not parts:
      return {'maps': np.zeros((0, *self.image_size), np.float32), 'scores': np.zeros((0,), np.float32),
              'flags': np.zeros((0,), bool), 'threshold': np.float32(self.threshold)}
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} | {'threshold': np.float32(self.threshold)}

  def score(self, images: Sequence[np.ndarray]) -> tuple[list[np.ndarray], list[float]]:
    """(maps, image scores) of uint8 (H, W, 3) images at the export size, as `gcad_jax.load(W).score`."""
    images = [np.asarray(im) for im in images]
    for i, im in enumerate(images):
      if im.dtype != np.uint8 or im.shape != (*self.image_size, 3):
        raise ValueError(f'image {i} has shape {im.shape} and dtype {im.dtype}; this export takes uint8 '
                         f'{(*self.image_size, 3)} RGB images (export again with --image_size for others)')
    if not images:
      return [], []
    out = self.serve(np.stack(images))
    return list(out['maps']), [float(s) for s in out['scores']]


def _stablehlo(folder: pathlib.Path, entry: dict):
  import jax  # pylint: disable=g-import-not-at-top
  exported = jax.export.deserialize(bytearray((folder / entry['files'][0]).read_bytes()))
  call = jax.jit(exported.call)
  return lambda images: call(images)


def _onnx(folder: pathlib.Path, entry: dict):
  import onnxruntime  # pylint: disable=g-import-not-at-top
  session = onnxruntime.InferenceSession(str(folder / entry['files'][0]), providers=['CPUExecutionProvider'])
  return lambda images: dict(zip(OUTPUTS, session.run(list(OUTPUTS), {'images': images})))


def _saved_model(folder: pathlib.Path, entry: dict):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  loaded = tf.saved_model.load(str(folder / 'saved_model'))
  signature = loaded.signatures[entry['signature']]
  return lambda images: {k: v.numpy() for k, v in signature(images=tf.constant(images)).items()}


_RUNNERS = {'stablehlo': _stablehlo, 'onnx': _onnx, 'saved_model': _saved_model}


def load_exported(folder, fmt: str | None = None) -> ExportedModel:
  """The export in `folder` (checked, see `read_manifest`), in format `fmt` (default: the first of stablehlo,
  onnx, saved_model that it holds)."""
  manifest = read_manifest(folder)
  formats = manifest.get('formats', {})
  if fmt is None:
    fmt = next((f for f in _RUNNERS if f in formats), None)
  if fmt not in formats or fmt not in _RUNNERS:
    raise ExportError(f'{folder} holds the formats {sorted(formats)}, not {fmt!r}')
  return ExportedModel(folder, manifest, fmt)

