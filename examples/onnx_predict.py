"""Scores a folder of images with the ONNX file of a gcad_jax export: numpy, pillow and onnxruntime only.

  python examples/onnx_predict.py EXPORT_DIR IMAGE_DIR      (EXPORT_DIR from python -m gcad_jax.export --formats onnx)
"""
import json, pathlib, sys
import numpy as np, onnxruntime
from PIL import Image

export, folder = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
manifest = json.loads((export / 'manifest.json').read_text())
height, width = manifest['input']['image_size']
batch = manifest['formats']['onnx']['batch']
batch = 1 if batch == 'dynamic' else batch  # a fixed batch (--batch N): one image, repeated
session = onnxruntime.InferenceSession(str(export / 'model.onnx'), providers=['CPUExecutionProvider'])
print('image,score,anomalous')
for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in ('.png', '.jpg', '.jpeg', '.bmp')):
  image = np.asarray(Image.open(path).convert('RGB'))  # grey and RGBA converted, as gcad_jax.predict does
  if image.shape[:2] != (height, width):
    sys.exit(f'{path}: {image.shape[0]}x{image.shape[1]} pixels; this export takes {height}x{width}')
  maps, scores, flags = session.run(['maps', 'scores', 'flags'], {'images': np.stack([image] * batch)})
  print(f'{path.name},{scores[0]:.6g},{int(flags[0])}')
