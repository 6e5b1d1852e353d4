"""Session-wide test setup: 8 fake CPU devices and a persistent compilation cache.

XLA_FLAGS must be set before jax is first imported, so this runs at collection time. Tests that need one
device use a one-device mesh out of the eight.
"""

import os
import pathlib

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import jax  # noqa: E402  (after XLA_FLAGS)

from gcad_jax import xla_cpu  # noqa: E402

xla_cpu.set_cpu_xla_flags()  # What the entry points use (docs/performance.md); before any computation.

_CACHE = pathlib.Path(os.environ.get('GCAD_JAX_TEST_CACHE', pathlib.Path.home() / '.cache' / 'gcad_jax' / 'jax_cache'))
_CACHE.mkdir(parents=True, exist_ok=True)
jax.config.update('jax_compilation_cache_dir', str(_CACHE))
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)
