"""The fixture generators (tests/fixtures/make_*.py, the builders' dummy_data/make_dummy_data.py) as modules.

They are scripts, not packages, so tests load them by path; this is the one loader.
"""

import importlib.util
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load(relative_path: str):
  """The script at ROOT/relative_path, executed once as a module named after its file."""
  path = ROOT / relative_path
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def eval_fixture():
  """tests/fixtures/make_eval_fixture.py: the evaluator's tiny LOCO-layout category and its maps."""
  return load('tests/fixtures/make_eval_fixture.py')


def pro_fixture():
  """tests/fixtures/make_pro_fixture.py: the MVTec AD-layout PRO cross-check category and its maps."""
  return load('tests/fixtures/make_pro_fixture.py')


def mvtec_ad_dummy():
  """tfds_loco/mvtec_ad/dummy_data/make_dummy_data.py: the MVTec AD builder's dummy data generator."""
  return load('tfds_loco/mvtec_ad/dummy_data/make_dummy_data.py')
