"""`python -m gcad_jax.bench --modes=serve`: the serving function in each runtime, interleaved (issue 27 item 4).

For one scale p of the config, with random weights and μ/σ = 0/1 (the speed does not depend on them), the
serving function of gcad_jax/serving.py (uint8 images at the network size → maps, scores, flags) is timed as

  jax          the jitted function;
  stablehlo    its `jax.export` artefact (dynamic batch), deserialised and called;
  onnxruntime  its ONNX lowering (gcad_jax/onnx_lowering.py) in ONNX Runtime's CPU provider;
  torch_nchw   benchmarks/torch_reference.py's `anomaly_maps` (the branch maps, §8 step 1 only) with `--torch`.

Mode `serve` runs at the bench's batch, `serve_latency` at batch 1, as `infer` and `latency` do. The runners are
`bench.Runner`s: `bench.measure` interleaves them with any other mode's, and `bench.results` and `bench.table`
report them (the `jax×` column is each row's time over the jitted JAX function's).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gcad_jax import bench, bench_runners, serving
from gcad_jax.models import gcad

MODES = ('serve', 'serve_latency')


def serving_fn(config: Any, p: int, seed: int = 0):
  """The serving function of a random model of scale p at the network size (no workdir needed)."""
  nets = gcad.build_nets(config, p)
  size = tuple(config.dataset.image_size)
  state = jax.jit(lambda key: bench_runners.stage2_state(config, nets, key))(jax.random.key(seed))
  weights = {'params': state.params, 'e_loc_params': state.e_loc_params, 'eloc_stats': state.eloc_stats}
  unit = {'mean': np.float32(0.0), 'std': np.float32(1.0)}
  return serving.build({p: (nets, weights, {'loc': unit, 'glo': unit})}, net_size=size, image_size=size,
                       threshold=0.0, resize_method=config.dataset.resize_method, fusion=config.score.fusion,
                       squared=bool(config.score.squared))


def _images(config: Any, batch: int, seed: int) -> np.ndarray:
  height, width = config.dataset.image_size
  return np.random.default_rng(seed).integers(0, 256, (batch, height, width, 3), dtype=np.uint8)


def _loop(call, x):
  def run(n):
    for _ in range(n):
      jax.block_until_ready(call(x))
  return run


def runners(config: Any, p: int, batch: int, iters: int, *, with_torch: bool = False, seed: int = 0,
            torch_reference: str | None = None) -> list[bench.Runner]:
  """jax, stablehlo, onnxruntime (and torch_nchw) Runners of modes serve (batch) and serve_latency (1)."""
  import time  # pylint: disable=g-import-not-at-top
  fn = serving_fn(config, p, seed)
  out = []
  exported = None
  t0 = time.perf_counter()
  try:
    spec = jax.ShapeDtypeStruct((jax.export.symbolic_shape('batch')[0], *config.dataset.image_size, 3), jnp.uint8)
    exported = jax.export.deserialize(jax.export.export(jax.jit(fn), platforms=('cpu',))(spec).serialize())
    export_s = time.perf_counter() - t0
  except Exception as e:  # pylint: disable=broad-except (recorded in the row)
    export_s, export_error = None, repr(e)[:400]
  for mode, b in zip(MODES, (batch, 1)):
    x = _images(config, b, seed)
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(jax.ShapeDtypeStruct(x.shape, jnp.uint8)).compile()
    out.append(bench.Runner('jax', mode, b, _loop(compiled, x), iters,
                            {'compile_s': time.perf_counter() - t0}))
    if exported is None:
      out.append(bench.Runner('stablehlo', mode, b, None, iters, {'error': export_error}))
    else:
      call = jax.jit(exported.call)
      out.append(bench.Runner('stablehlo', mode, b, _loop(call, x), iters, {'export_s': export_s}))
    out.append(_onnx_runner(fn, mode, x, iters))
  if with_torch:
    for r in bench_runners.torch_runners(config, p, ('infer', 'latency'), batch, iters, ('nchw',), seed=seed,
                                 reference=torch_reference):
      r.mode = 'serve' if r.mode == 'infer' else 'serve_latency'
      out.append(r)
  return out


def _onnx_runner(fn, mode: str, x: np.ndarray, iters: int) -> bench.Runner:
  import time  # pylint: disable=g-import-not-at-top
  try:
    import onnxruntime  # pylint: disable=g-import-not-at-top (the `export` or `test` extra)
    from gcad_jax import onnx_lowering  # pylint: disable=g-import-not-at-top
    t0 = time.perf_counter()
    model = onnx_lowering.to_onnx(fn, jax.ShapeDtypeStruct(x.shape, jnp.uint8))
    options = onnxruntime.SessionOptions()
    options.enable_cpu_mem_arena = False  # freed after each run, as XLA's buffers are: no arena held between
    session = onnxruntime.InferenceSession(model.SerializeToString(), options, providers=['CPUExecutionProvider'])
    info = {'export_s': time.perf_counter() - t0, 'onnxruntime': onnxruntime.__version__,
            'threads': session.get_session_options().intra_op_num_threads, 'memory_arena': False}
  except Exception as e:  # pylint: disable=broad-except (e.g. onnxruntime missing: recorded in the row)
    return bench.Runner('onnxruntime', mode, len(x), None, iters, {'error': repr(e)[:400]})

  def run(n):
    for _ in range(n):
      session.run(None, {'images': x})
  return bench.Runner('onnxruntime', mode, len(x), run, iters, info)
