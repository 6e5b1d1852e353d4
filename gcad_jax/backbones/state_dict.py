"""A PyTorch state dict read into Flax variables: the one reader both backbone converters use.

Arrays are taken by name, convolution kernels transposed to Flax's layout, batch norms split into parameters
and running statistics; every entry taken is recorded, so that a converter can refuse a state dict with
entries it did not use (another architecture) instead of loading part of it.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np


class StateDictReader:
  """Takes entries of `sd` (name → array) as float32 and remembers which; `architecture` names it in errors."""

  def __init__(self, sd: Mapping[str, np.ndarray], architecture: str):
    self.sd, self.architecture, self.used = sd, architecture, set()

  def take(self, key: str) -> np.ndarray:
    self.used.add(key)
    return np.asarray(self.sd[key], np.float32)

  def conv(self, prefix: str) -> dict:
    """{'kernel'} of a bias-free Conv2d: `prefix.weight` from PyTorch's (out, in/groups, kh, kw) to Flax's
    (kh, kw, in/groups, out)."""
    return {'kernel': np.transpose(self.take(f'{prefix}.weight'), (2, 3, 1, 0))}

  def batch_norm(self, prefix: str) -> tuple[dict, dict]:
    """({'scale', 'bias'}, {'mean', 'var'}) of a BatchNorm2d; its num_batches_tracked counts as used."""
    self.used.add(f'{prefix}.num_batches_tracked')
    return ({'scale': self.take(f'{prefix}.weight'), 'bias': self.take(f'{prefix}.bias')},
            {'mean': self.take(f'{prefix}.running_mean'), 'var': self.take(f'{prefix}.running_var')})

  def missing(self, error: KeyError, naming: str) -> KeyError:
    """The error for an entry the state dict lacks; `naming` describes the names expected."""
    return KeyError(f'{self.architecture} state dict lacks {error}; expected {naming}')

  def check_all_used(self, suspects: str) -> None:
    """Refuses entries that no layer took; `suspects` says what such a state dict probably is."""
    unused = sorted(set(self.sd) - self.used)
    if unused:
      raise ValueError(f'{self.architecture} state dict has unexpected entries {unused[:5]} ({suspects})')
