"""How much information a teacher's descriptors carry: the spectrum of their correlation matrix.

A teacher whose d descriptor dimensions are decorrelated has a flat spectrum (participation ratio near d);
one collapsed to a single signal has one eigenvalue near d and a participation ratio near 1, which a
per-channel "std > 0" check cannot see (docs/teachers.md, "Descriptor diagnostics"). Pure numpy functions
over (N, d) arrays of descriptors, N ≥ d.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def correlation_matrix(descriptors: np.ndarray) -> np.ndarray:
  """The (d, d) Pearson correlation matrix of (N, d) descriptors; a constant dimension gets a zero row."""
  x = np.asarray(descriptors, np.float64)
  if x.ndim != 2 or x.shape[0] < 2:
    raise ValueError(f'correlation_matrix: need (N ≥ 2, d) descriptors, got shape {x.shape}')
  x = x - x.mean(axis=0)
  std = x.std(axis=0)
  x = x / np.where(std > 0, std, 1.0)
  return x.T @ x / len(x)


def correlation_spectrum(descriptors: np.ndarray) -> np.ndarray:
  """Eigenvalues, largest first, of the descriptors' correlation matrix (they sum to d)."""
  return np.linalg.eigvalsh(correlation_matrix(descriptors))[::-1].clip(min=0.0)


def participation_ratio(eigenvalues: np.ndarray) -> float:
  """(Σλ)² / Σλ²: 1 for one signal, d for d equal eigenvalues (the effective number of dimensions)."""
  eig = np.asarray(eigenvalues, np.float64)
  return float(eig.sum() ** 2 / max(np.square(eig).sum(), 1e-300))


def top_share(eigenvalues: np.ndarray) -> float:
  """The largest eigenvalue's share of the total: 1/d for decorrelated descriptors, → 1 when collapsed."""
  eig = np.asarray(eigenvalues, np.float64)
  return float(eig.max() / max(eig.sum(), 1e-300))


def explained_variance(prediction: np.ndarray, target: np.ndarray) -> float:
  """1 − Σ‖ŷ − y‖² / Σ‖y − ȳ‖² over (N, k) rows: the share of the target's variance that ŷ reproduces."""
  y = np.asarray(target, np.float64)
  residual = np.square(np.asarray(prediction, np.float64) - y).sum()
  total = np.square(y - y.mean(axis=0)).sum()
  return float(1.0 - residual / max(total, 1e-300))


def linear_probe_explained_variance(descriptors: np.ndarray, target: np.ndarray, ridge: float = 1e-3) -> float:
  """Explained variance of the target by a ridge-regressed linear map of the descriptors, held out.

  Fitted on the first half of the rows, scored on the second half: a property of the descriptors alone
  (any teacher file, the decoder D discarded), comparable between teachers on the same crops.
  """
  x, y = np.asarray(descriptors, np.float64), np.asarray(target, np.float64)
  half = len(x) // 2
  mean_x, mean_y = x[:half].mean(axis=0), y[:half].mean(axis=0)
  scale = x[:half].std(axis=0) + 1e-12
  a = (x[:half] - mean_x) / scale
  gram = a.T @ a + ridge * len(a) * np.eye(a.shape[1])
  weights = np.linalg.solve(gram, a.T @ (y[:half] - mean_y))
  return explained_variance(((x[half:] - mean_x) / scale) @ weights + mean_y, y[half:])


def describe(descriptors: np.ndarray, target: np.ndarray | None = None,
             decoded: np.ndarray | None = None) -> dict[str, Any]:
  """The diagnostics of one set of descriptors: participation ratio, top eigenvalue and its share, and,
  given the target features of the same crops, the held-out linear probe's (and the decoder's) explained
  variance."""
  eig = correlation_spectrum(descriptors)
  out = {'crops': int(len(descriptors)), 'dims': int(eig.size), 'participation_ratio': participation_ratio(eig),
         'top_eigenvalue': float(eig[0]), 'top_share': top_share(eig),
         'mean_abs_offdiag_corr': _mean_abs_offdiag(descriptors)}
  if target is not None:
    out['probe_explained_variance'] = linear_probe_explained_variance(descriptors, target)
  if decoded is not None and target is not None:
    out['decoder_explained_variance'] = explained_variance(decoded, target)
  return out


def _mean_abs_offdiag(descriptors: np.ndarray) -> float:
  corr = np.abs(correlation_matrix(descriptors))
  d = corr.shape[0]
  return float((corr.sum() - np.trace(corr)) / max(d * (d - 1), 1))


def format_line(name: str, stats: dict[str, Any]) -> str:
  """One log line: 'NAME: PR 12.3 / 128, top 23.4 % (29.9), probe EV 51.2 %'."""
  line = (f'{name}: participation ratio {stats["participation_ratio"]:.2f} of {stats["dims"]}, top eigenvalue '
          f'{stats["top_eigenvalue"]:.1f} ({100 * stats["top_share"]:.1f} %)')
  if 'probe_explained_variance' in stats:
    line += f', held-out explained variance (linear probe) {100 * stats["probe_explained_variance"]:.1f} %'
  if 'decoder_explained_variance' in stats:
    line += f', (decoder D) {100 * stats["decoder_explained_variance"]:.1f} %'
  return line
