"""The test-split evaluation of a trained GCAD: scoring → export → evaluator → report (docs/method.md §8, §10).

`assess_test_split` (the assess step) is called by `train.validate_and_score` with the final states of every
scale; `gcad_jax.evaluate`, the standalone evaluator, scores any method's maps from files. It writes, in the workdir:

  score_norm.json                     μ, σ per scale and branch from the validation images (§8 step 2)
  anomaly_maps/<category>/test/…      combined maps, official layout (docs/data_format.md §8); with
  anomaly_maps_{local,global}/…       config.export.branch_maps also each normalised branch alone
  metrics.json                        official keys (combined) + 'variants' (local, global) + 'gcad_jax'
  report.md, plots/                   tables, sPRO and ROC curves, overlays
"""

from __future__ import annotations

import pathlib
import time
from typing import Mapping

import jax
import numpy as np
from absl import logging

from gcad_jax import evaluate, input_pipeline, map_files, parallel, report, scoring
from tfds_loco import formats


def _say(message: str, *args) -> None:
  logging.info('[eval] ' + message, *args)


def branch_maps_enabled(config) -> bool:
  section = config.get('export') if hasattr(config, 'get') else None
  return bool(section.get('branch_maps', False)) if section is not None else False


def scale_steps(config, models: Mapping[int, tuple], step: int) -> dict[int, int]:
  """{p: the training step of scale p's state}; `step` for a state without one (e.g. bare weights)."""
  steps = {}
  for p, (_, state) in models.items():
    value = getattr(state, 'step', None)
    if value is not None:
      value = np.asarray(parallel.unreplicate(value, config.parallel)).reshape(-1)[0]
    steps[p] = int(step if value is None else value)
  return steps


def checkpoint_line(config, steps: Mapping[int, int], maps_root: str) -> str:
  """report.md's first line: each scale's checkpoint step, the scoring choices, where the maps are."""
  if len(steps) == 1:
    where = f'Checkpoint step {next(iter(steps.values()))}; scales {list(steps)}'
  else:
    where = f'Checkpoint steps {", ".join(f"p{p} {s}" for p, s in steps.items())}; scales {list(steps)}'
  return (f'{where}; normalisation {config.score.norm}, squared {bool(config.score.squared)}; '
          f'maps in `{maps_root}`.')


def assess_test_split(config, workdir, models: Mapping[int, tuple], mesh, step: int = 0, val_data=None,
                      test_data=None) -> dict:
  """Scores the test split with `models` = {p: (nets, state)}, exports, evaluates and reports.

  `step` is recorded as metrics.json's gcad_jax.step; each scale's own step (its state's, see `scale_steps`)
  goes to gcad_jax.steps and report.md. Returns {'metrics', 'report', 'maps_dir', 'headline', 'seconds'}.
  """
  t0 = time.perf_counter()
  seconds = {}

  def lap(name):
    seconds[name] = round(time.perf_counter() - t0 - sum(seconds.values()), 2)

  workdir = pathlib.Path(workdir)
  category = config.dataset.category
  cat_dir = formats.reader_for_config(config)  # the category folder in its format (loco, mvtec_ad, folder)
  val_data = val_data if val_data is not None else input_pipeline.load_split(config, 'validation')
  test_data = test_data if test_data is not None else input_pipeline.load_split(config, 'test')
  lap('load')
  _say('scoring %d validation and %d test images of %s at scales %s', len(val_data), len(test_data), category,
       list(models))
  stats = scoring.compute_norm_stats(config, models, val_data.images, mesh)
  scoring.save_norm_stats(stats, config, workdir)
  for p, s in stats.items():
    _say('p%d normalisation (%s): loc μ %.4g σ %.4g, glo μ %.4g σ %.4g', p, config.score.norm,
         float(s['loc']['mean'].mean()), float(s['loc']['std'].mean()), float(s['glo']['mean'].mean()),
         float(s['glo']['std'].mean()))
  scored = scoring.score_split(config, models, val_data.images, test_data, mesh, stats=stats)
  full = {v: scored.full_res(v) for v in scoring.VARIANTS}
  lap('score')
  if jax.process_index() != 0:  # Multi-host: every process scored (collectives); one writes.
    return {'metrics': None, 'report': None, 'maps_dir': None, 'headline': None, 'seconds': seconds}

  steps = scale_steps(config, models, step)
  recorded = {'step': int(step), 'steps': {str(p): s for p, s in steps.items()}, 'scales': [int(p) for p in models]}
  exported = map_files.export_variants(workdir, category, cat_dir, full, branch_maps=branch_maps_enabled(config),
                                    description=recorded)
  image_scores = exported['combined']['image_scores']
  _say('wrote %d maps to %s', len(image_scores), exported['combined']['root'])
  lap('export')

  per_variant = {}
  for variant in scoring.VARIANTS:
    _say('evaluating the %s maps (exact sPRO, docs/data_format.md §11)', variant)
    # Per defect type too, for every variant: which branch finds what (report.md's per-type table).
    per_variant[variant] = evaluate.evaluate_category(cat_dir, full[variant])
  lap('evaluate')

  metrics = report.assemble_metrics(
      per_variant['combined'], {v: per_variant[v] for v in ('local', 'global')},
      extra={'anomaly_maps': exported['combined']['root'], **recorded, 'score': config.score.to_dict()
             if hasattr(config.score, 'to_dict') else dict(config.score)})
  h = report.headline(metrics)
  lines = [checkpoint_line(config, steps, exported['combined']['root'])]
  path = report.write_category_report(workdir, metrics, category, cat_dir, full['combined'], image_scores,
                                      step=step, extra_lines=lines)
  lap('report')
  seconds['total'] = round(time.perf_counter() - t0, 2)
  _say('AUC-sPRO@0.05 structural %.3f logical %.3f mean %.3f; AUROC structural %.3f logical %.3f mean %.3f',
       *(float('nan') if h['spro'][k] is None else h['spro'][k] for k in ('structural', 'logical', 'mean')),
       *(float('nan') if h['auroc'][k] is None else h['auroc'][k] for k in ('structural', 'logical', 'mean')))
  _say('report: %s (%.1f s: %s)', path, seconds['total'], seconds)
  return {'metrics': metrics, 'report': str(path), 'maps_dir': exported['combined']['root'], 'headline': h,
          'seconds': seconds}
