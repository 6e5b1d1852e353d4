"""Atomic file writes: a hidden temporary file in the same folder, then one rename (issue 7, item 5).

A crash leaves either the previous file or the new one, never a partial one under the final name, and the
temporary name starts with a dot, so folder scans (the official evaluator's, `glob('*.png')`) never see it.
Remote paths (`gs://…`) are written in place: their object stores make each upload whole by themselves.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
from typing import Any, Iterator


def temporary_path(path: str | os.PathLike) -> pathlib.Path:
  """`.<stem>.<pid>.tmp<suffix>` next to `path`; the suffix is kept so writers that sniff it still work."""
  path = pathlib.Path(path)
  return path.parent / f'.{path.stem}.{os.getpid()}.tmp{path.suffix}'


def _is_remote(path) -> bool:
  return '://' in os.fspath(path)


@contextlib.contextmanager
def replacing(path: str | os.PathLike) -> Iterator[Any]:
  """Yields a hidden temporary path to write; it becomes `path` when the block ends, and is removed on error."""
  if _is_remote(path):
    yield path
    return
  final = pathlib.Path(path)
  final.parent.mkdir(parents=True, exist_ok=True)
  tmp = temporary_path(final)
  try:
    yield tmp
    os.replace(tmp, final)
  finally:
    if tmp.exists():
      tmp.unlink()


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
  if _is_remote(path):
    from etils import epath  # pylint: disable=g-import-not-at-top
    epath.Path(path).write_bytes(data)
    return
  with replacing(path) as tmp:
    with open(tmp, 'wb') as f:
      f.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
  write_bytes(path, text.encode())


def write_json(path: str | os.PathLike, value: Any, **dump_kwargs) -> None:
  """`json.dumps(value, **dump_kwargs)` plus a final newline, atomically."""
  write_text(path, json.dumps(value, **dump_kwargs) + '\n')
