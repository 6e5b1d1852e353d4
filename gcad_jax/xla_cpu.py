"""XLA:CPU flags that gcad_jax's entry points set before JAX starts (docs/performance.md).

jaxlib 0.10 hands every convolution to YNNPACK, which on the CPUs we measured is 3–7× slower than XLA's own
(Eigen) convolutions for GCAD's layers; `-individual_convolution` keeps YNNPACK for everything else. XLA
aborts on a flag it does not know, so the flags are added only for the jaxlib versions they were measured
with; they do nothing on GPUs and TPUs. Set GCAD_JAX_KEEP_XLA_FLAGS=1 to leave XLA_FLAGS alone.
`cpuinfo()` reads the host CPU's description, which the benchmark and each run's provenance record.
"""

from __future__ import annotations

import os
import pathlib

CPU_XLA_FLAGS = ('--xla_cpu_experimental_ynn_fusion_type=-individual_convolution',)
JAXLIB_VERSIONS = ((0, 10), (0, 11))  # [first, last): where the flag exists and was measured to help


def set_cpu_xla_flags(flags: tuple[str, ...] = CPU_XLA_FLAGS) -> bool:
  """Adds `flags` to XLA_FLAGS (a flag already set there wins) if JAX's backends have not started (they read
  XLA_FLAGS at the first computation) and jaxlib is a version they were measured with; returns whether."""
  if os.environ.get('GCAD_JAX_KEEP_XLA_FLAGS'):
    return False
  import jaxlib  # pylint: disable=g-import-not-at-top
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top (no public API for this question)
  version = tuple(int(v) for v in jaxlib.__version__.split('.')[:2])
  if xla_bridge.backends_are_initialized() or not JAXLIB_VERSIONS[0] <= version < JAXLIB_VERSIONS[1]:
    return False
  current = os.environ.get('XLA_FLAGS', '')
  names = {f.split('=')[0] for f in current.split()}
  os.environ['XLA_FLAGS'] = ' '.join([current, *(f for f in flags if f.split('=')[0] not in names)]).strip()
  return True


def cpuinfo() -> dict[str, str]:
  """The first processor's fields of /proc/cpuinfo ('model name', 'flags', ...); {} where there is none."""
  try:
    text = pathlib.Path('/proc/cpuinfo').read_text()
  except OSError:
    return {}
  fields = {}
  for line in text.splitlines():
    if not line.strip():
      break  # The first processor's block ends at the first blank line.
    key, _, value = line.partition(':')
    fields.setdefault(key.strip(), value.strip())
  return fields
