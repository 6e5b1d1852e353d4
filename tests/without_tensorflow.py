"""Runs a Python script or module with `tensorflow` hidden, as on an accelerator image without it.

  python tests/without_tensorflow.py -m gcad_jax.main --config=... --workdir=...
  python tests/without_tensorflow.py path/to/script.py [args ...]

Every finder on `sys.meta_path` is wrapped so that it does not find `tensorflow` or its submodules: then
`import tensorflow` raises ModuleNotFoundError and `importlib.util.find_spec('tensorflow')` returns None,
exactly as for a package that is not installed (etils and TFDS probe with find_spec and `sys.modules`, so
an import hook that raised, or a None in `sys.modules`, would not look like a missing package to them).
"""

import os
import runpy
import sys

# GCAD_TEST_HIDE=jax,jaxlib hides more packages (a machine without JAX: tests/test_export.py).
BLOCKED = ('tensorflow', *filter(None, os.environ.get('GCAD_TEST_HIDE', '').split(',')))


class _Hiding:
  """A meta path finder that finds what `finder` finds, except the BLOCKED packages."""

  def __init__(self, finder):
    self._finder = finder

  def find_spec(self, fullname, path=None, target=None):
    if fullname.split('.')[0] in BLOCKED:
      return None
    find_spec = getattr(self._finder, 'find_spec', None)
    return find_spec(fullname, path, target) if find_spec else None

  def __getattr__(self, name):
    return getattr(self._finder, name)


def block() -> None:
  """Hides BLOCKED from every import after this call; refuses to run if one is already imported."""
  loaded = [n for n in sys.modules if n.split('.')[0] in BLOCKED]
  if loaded:
    raise RuntimeError(f'{loaded[:3]} already imported; call block() first')
  sys.meta_path[:] = [_Hiding(f) for f in sys.meta_path]


if __name__ == '__main__':
  block()
  args = sys.argv[1:]
  if args[:1] == ['-m']:  # As `python -m`: the working directory first on the path, not this folder.
    sys.path[0] = os.getcwd()
    sys.argv = [args[1]] + args[2:]
    runpy.run_module(args[1], run_name='__main__', alter_sys=True)
  else:
    sys.argv = args
    sys.path[0] = os.path.dirname(os.path.abspath(args[0]))
    runpy.run_path(args[0], run_name='__main__')
