"""Reproduces, without gcad_jax, the "Event loop is closed" warning that the reliability tests can leave.

  python benchmarks/orbax_event_loop_probe.py [--restores 20]

Saves a small tree with Orbax's StandardCheckpointer (OCDBT), damages it the two ways the reliability tests
do (manifest.ocdbt deleted; the largest data file truncated), restores it repeatedly (each restore fails
with ValueError, as it should) and counts what reaches `sys.unraisablehook`. After a failed restore,
callbacks still arrive at the asyncio loop that Orbax has already closed: `RuntimeError('Event loop is
closed')` in `call_soon_threadsafe`, reported as "Exception ignored in: None" with no Python caller in the
traceback (so from native threads; TensorStore's reads that were still in flight, by all appearances).
pytest turns those into PytestUnraisableExceptionWarning and attributes them to whichever later test runs
the garbage collector; pyproject.toml filters exactly that message (docs/reliability.md, section 1). Not
part of CI.
"""

from __future__ import annotations

import argparse
import gc
import pathlib
import sys
import tempfile

import numpy as np
import orbax.checkpoint as ocp


def damage(checkpoint: pathlib.Path, how: str) -> None:
  if how == 'manifest_deleted':
    (checkpoint / 'manifest.ocdbt').unlink()
  else:  # 'data_truncated'
    data = max((checkpoint / 'ocdbt.process_0' / 'd').iterdir(), key=lambda p: p.stat().st_size)
    data.write_bytes(data.read_bytes()[:data.stat().st_size // 2])


def probe(how: str, restores: int, root: pathlib.Path) -> tuple[int, list[str]]:
  """Returns (failed restores, the unraisable exceptions seen) for one kind of damage."""
  unraisable = []
  previous_hook = sys.unraisablehook
  sys.unraisablehook = lambda u: unraisable.append(f'{u.exc_value!r} in {u.object!r}')
  try:
    tree = {f'array{i}': np.arange(20_000, dtype=np.float32) + i for i in range(40)}
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(root / how, tree)
    checkpointer.wait_until_finished()
    damage(root / how, how)
    failed = 0
    for _ in range(restores):
      try:
        checkpointer.restore(root / how, tree)
      except ValueError:
        failed += 1
    checkpointer.close()
    gc.collect()
  finally:
    sys.unraisablehook = previous_hook
  return failed, unraisable


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--restores', type=int, default=20)
  args = parser.parse_args(argv)
  with tempfile.TemporaryDirectory() as tmp:
    for how in ('manifest_deleted', 'data_truncated'):
      failed, unraisable = probe(how, args.restores, pathlib.Path(tmp))
      kinds = sorted(set(unraisable))
      print(f'{how}: {failed}/{args.restores} restores failed; {len(unraisable)} unraisable exceptions: {kinds}')
  print(f'orbax-checkpoint {ocp.__version__}')


if __name__ == '__main__':
  main()
