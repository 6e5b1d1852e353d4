"""Evaluation metrics as pure NumPy functions: exact sPRO curves, AUC-sPRO, image AUROC (docs/data_format.md §9, §11).

The submodules are `spro`, `pro` (PRO on MVTec AD) and `auroc`; the package re-exports their main functions.
"""

from gcad_jax.metrics.auroc import auroc_official
from gcad_jax.metrics.auroc import auroc_standard
from gcad_jax.metrics.auroc import roc_official
from gcad_jax.metrics.spro import LIMITS
from gcad_jax.metrics.spro import ScorePool
from gcad_jax.metrics.spro import SproCurve
from gcad_jax.metrics.spro import auc_at_limit
from gcad_jax.metrics.spro import channel_events
from gcad_jax.metrics.spro import defect_type_subsets
from gcad_jax.metrics.spro import downsample
from gcad_jax.metrics.spro import exact_spro_curve
from gcad_jax.metrics.spro import interval_error_bound
from gcad_jax.metrics.spro import limit_key
from gcad_jax.metrics.spro import mean_of_kinds
from gcad_jax.metrics.spro import spro_curve_at_thresholds

__all__ = [
    'LIMITS', 'ScorePool', 'SproCurve', 'auc_at_limit', 'auroc_official', 'auroc_standard',
    'channel_events', 'defect_type_subsets', 'downsample', 'exact_spro_curve', 'interval_error_bound',
    'limit_key', 'mean_of_kinds', 'roc_official', 'spro_curve_at_thresholds',
]
