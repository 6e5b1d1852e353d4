r"""The GCAD benchmark: training and inference speed, latency, compile time, memory and FLOPs (issue 6).

  python -m gcad_jax.bench --preset=cpu                            # 128², p = 17, batch 8 (configs/synthetic.py)
  python -m gcad_jax.bench --preset=paper_p33 --batch=1 --torch    # interleaved with the PyTorch reference
  python -m gcad_jax.bench --config=configs/loco.py --scale=33 --dtype=bfloat16 --batch=64 --out=b.json

Measures, after warm-up and over `--reps` repetitions (median and spread), on synthetic random inputs:
`train` (the full stage-2 step of docs/method.md §7.5: dense E_loc, E_glo, U, R_loc, R_glo, Eq. 2–5, two Adam
updates), `train_cached` (the same without the E_loc forward, features given: `train.cache_eloc`), `infer`
(the anomaly maps of §8 step 1) and `latency` (`infer` at batch 1, one blocked call each). Per mode: compile
time, FLOPs per image from XLA's cost analysis, the achieved FLOP/s and its fraction of the device's stated
peak, and memory. `--torch` interleaves the same modes of benchmarks/torch_reference.py (eager, NCHW and
channels_last) repetition by repetition and reports the median of the per-repetition time ratios.

`--ab=up_form=conv_transpose` (or stride_form=conv, dense_form=space_to_batch) also times the model with
another layer form, interleaved; `--flops_only` prints the FLOPs per image without compiling. Results, tables
and the machine: docs/performance.md.

Imports only jax, flax, optax and numpy: the presets are plain dicts; `--config` imports configlib (and so
ml_collections) lazily; torch only with `--torch`.
"""

from __future__ import annotations

import argparse
import ast
import copy
import dataclasses
import functools
import importlib.util
import json
import os
import pathlib
import platform
import resource
import statistics
import sys
import time
import types
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gcad_jax.models import gcad, global_net, teacher, unet
from gcad_jax.xla_cpu import CPU_XLA_FLAGS, cpuinfo, set_cpu_xla_flags

# The paper's setting (configlib.base_config(); docs/method.md §1, §12), the fields the networks and the step use.
PAPER = {
    'model': {'init': 'torch_default', 'dtype': 'float32', 'scales': (17, 33)},
    'dataset': {'image_size': (256, 256)},
    'eloc': {'d_loc': 128, 'widths': (128, 256, 256), 'leaky_slope': 5e-3, 'final_activation': 'linear',
             'p33_first_kernel': 5, 'pad_mode': 'zeros'},
    'eglo': {'g': 32, 'd_glo': 10, 'enc_channels': (32, 32, 64, 64, 64, 64),
             'dec_channels': (64, 64, 64, 64, 32, 32, 32), 'leaky_slope': 0.2, 'skip_levels': 5,
             'skip_fade': {'mode': 'sequential', 'end_epoch': 100.0}},
    'u': {'hidden': (128, 128), 'leaky_slope': 0.2},
    'unet': {'depth': 5, 'wf': 6, 'padding': True},
    'train': {'batch_size': 16, 'loss_reduction': 'sum_per_image', 'stop_grad_eglo_in_lglo': False},
    'optim': {'learning_rate': 1e-4, 'weight_decay': 1e-5, 'b1': 0.9, 'b2': 0.999, 'eps': 1e-8},
}
CPU = {  # configs/synthetic.py
    'dataset': {'image_size': (128, 128)}, 'model': {'scales': (17, 33)},
    'eglo': {'g': 16, 'd_glo': 8, 'enc_channels': (16, 16, 32, 32, 32, 32),
             'dec_channels': (32, 32, 32, 32, 16, 16, 16), 'skip_fade': {'end_epoch': 40.0}},
    'u': {'hidden': (32, 32)}, 'unet': {'depth': 4, 'wf': 4}, 'train': {'batch_size': 8},
    'optim': {'learning_rate': 5e-4},
}
TINY = {  # configs/tiny.py
    'dataset': {'image_size': (64, 64)}, 'model': {'scales': (17,)},
    'eloc': {'widths': (16, 16, 16), 'd_loc': 16},
    'eglo': {'g': 8, 'd_glo': 4, 'enc_channels': (8,) * 6, 'dec_channels': (8,) * 7, 'skip_fade': {'end_epoch': 2.0}},
    'u': {'hidden': (16, 16)}, 'unet': {'depth': 3, 'wf': 3}, 'train': {'batch_size': 8},
}
# name: (overrides of PAPER, p)
PRESETS = {'paper_p33': ({}, 33), 'paper_p17': ({}, 17), 'cpu': (CPU, 17), 'tiny': (TINY, 17)}


MODES = ('train', 'train_cached', 'infer', 'latency', 'e_loc', 'r_loc', 'e_glo',  # e_loc..e_glo: one forward each
         'serve')  # the serving function in JAX, StableHLO, ONNX Runtime (and torch): gcad_jax/serve_bench.py

# Dense peak TFLOP/s per chip (vendor data sheets, no sparsity): bfloat16 tensor cores/MXU, and float32 at
# JAX's default precision (TF32 tensor cores on NVIDIA; None where the vendor states none). Most specific first.
PEAKS = (
    ('H100 PCIe', {'bfloat16': 756.0, 'float32': 378.0}),
    ('H100', {'bfloat16': 989.4, 'float32': 494.7}),  # SXM
    ('H200', {'bfloat16': 989.4, 'float32': 494.7}),
    ('GH200', {'bfloat16': 989.4, 'float32': 494.7}),
    ('A100', {'bfloat16': 312.0, 'float32': 156.0}),
    ('TPU v4', {'bfloat16': 275.0, 'float32': None}),
    ('TPU v5 lite', {'bfloat16': 197.0, 'float32': None}),
    ('TPU v5e', {'bfloat16': 197.0, 'float32': None}),
    ('TPU v5', {'bfloat16': 459.0, 'float32': None}),  # v5p
    ('TPU v6 lite', {'bfloat16': 918.0, 'float32': None}),
)


def _deep_update(base: dict, overrides: dict) -> dict:
  out = copy.deepcopy(base)
  for key, value in overrides.items():
    out[key] = _deep_update(out[key], value) if isinstance(value, dict) else value
  return out


def _namespace(tree: dict) -> types.SimpleNamespace:
  return types.SimpleNamespace(**{k: _namespace(v) if isinstance(v, dict) else v for k, v in tree.items()})


def preset_config(name: str, **overrides: Any) -> tuple[types.SimpleNamespace, int]:
  """(config namespace, p) of a preset; `overrides` are dotted keys, e.g. {'model.dtype': 'bfloat16'}."""
  if name not in PRESETS:
    raise ValueError(f'--preset={name!r} is not one of {list(PRESETS)}')
  changes, p = PRESETS[name]
  tree = _deep_update(PAPER, changes)
  for key, value in overrides.items():
    *groups, field = key.split('.')
    node = tree
    for group in groups:
      node = node[group]
    node[field] = value
  return _namespace(tree), p


def file_config(path: str, scale: int | None, **overrides: Any) -> tuple[Any, int]:
  """(ConfigDict, p) from a config file `path[:argument]` (imports configlib, i.e. ml_collections)."""
  file, _, arg = path.partition(':')
  spec = importlib.util.spec_from_file_location('bench_config', file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(arg) if arg else module.get_config()
  for key, value in overrides.items():
    *groups, field = key.split('.')
    node = config
    for group in groups:
      node = node[group]
    node[field] = value
  return config, tuple(config.model.scales)[-1] if scale is None else scale


def optimizer(config: Any) -> optax.GradientTransformation:
  """Adam with coupled L2 (docs/method.md §7.3): the chain of gcad_jax.train.make_optimizer."""
  o = config.optim
  return optax.chain(optax.add_decayed_weights(o.weight_decay),
                     optax.adam(o.learning_rate, b1=o.b1, b2=o.b2, eps=o.eps))


def make_state(config: Any, nets: gcad.GCADNets, key: jax.Array) -> tuple[dict, dict]:
  """(state, frozen): trainable parameters and both Adam states; E_loc parameters and statistics."""
  trainable, e_loc_params = gcad.init_params(nets, key, tuple(config.dataset.image_size))
  tx = optimizer(config)
  main = {k: trainable[k] for k in ('e_glo', 'u', 'r_loc')}
  state = {'step': jnp.zeros((), jnp.int32), 'params': trainable, 'opt_main': tx.init(main),
           'opt_rglo': tx.init(trainable['r_glo'])}
  d = config.eloc.d_loc
  frozen = {'e_loc': e_loc_params, 'stats': {'mean': jnp.zeros((d,), jnp.float32), 'std': jnp.ones((d,), jnp.float32)}}
  return state, frozen


def train_step(state: dict, frozen: dict, x: jnp.ndarray, f: jnp.ndarray | None = None, *, nets: gcad.GCADNets,
               config: Any, steps_per_epoch: int = 100) -> tuple[dict, jnp.ndarray]:
  """The stage-2 step of gcad_jax.train.train_step (docs/method.md §7.5) on one device, without augmentation.

  `f` given: E_loc features cached (`train.cache_eloc`), so E_loc is not evaluated.
  """
  tx = optimizer(config)
  fade = config.eglo.skip_fade
  weights = global_net.skip_weights(state['step'] / steps_per_epoch, mode=fade.mode, end_epoch=fade.end_epoch,
                                    levels=config.eglo.skip_levels)
  if f is None:
    f = gcad.eloc_features(nets, frozen['e_loc'], frozen['stats'], x)

  def loss_fn(params):
    losses = gcad.per_image_losses(nets, params, f, x, weights, with_glo=True,
                                   reduction=config.train.loss_reduction,
                                   stop_grad_eglo_in_lglo=config.train.stop_grad_eglo_in_lglo)
    return jnp.mean(losses['total'])

  params = state['params']
  loss, grads = jax.value_and_grad(loss_fn)(params)
  main = {k: params[k] for k in ('e_glo', 'u', 'r_loc')}
  updates, opt_main = tx.update({k: grads[k] for k in main}, state['opt_main'], main)
  main = optax.apply_updates(main, updates)
  updates, opt_rglo = tx.update(grads['r_glo'], state['opt_rglo'], params['r_glo'])
  r_glo = optax.apply_updates(params['r_glo'], updates)
  new_state = {'step': state['step'] + 1, 'params': {**main, 'r_glo': r_glo}, 'opt_main': opt_main,
               'opt_rglo': opt_rglo}
  return new_state, loss


def infer(state: dict, frozen: dict, x: jnp.ndarray, *, nets: gcad.GCADNets) -> tuple[jnp.ndarray, jnp.ndarray]:
  """(A_loc, A_glo) of docs/method.md §8 step 1 (E_loc, R_loc, E_glo with skips at 0, R_glo)."""
  return gcad.anomaly_maps(nets, state['params'], frozen['e_loc'], frozen['stats'], x)


def forward(state: dict, frozen: dict, x: jnp.ndarray, *, nets: gcad.GCADNets, net: str) -> jnp.ndarray:
  """One network's forward pass alone (the per-network profile: modes e_loc, r_loc, e_glo)."""
  if net == 'e_loc':
    return nets.e_loc.apply({'params': frozen['e_loc']}, x)
  if net == 'e_glo':
    return nets.e_glo.apply({'params': state['params']['e_glo']}, x, jnp.zeros((len(global_net.SKIP_NAMES),)))
  return getattr(nets, net).apply({'params': state['params'][net]}, x)


# ----------------------------------------------------------------------------------------------------
# Machine, peaks, timing.


def machine() -> dict:
  """The device, the host CPU, its load and the software versions (written into the JSON)."""
  info = {'backend': jax.default_backend(), 'device_kind': jax.devices()[0].device_kind,
          'device_count': jax.device_count(), 'jax': jax.__version__, 'python': platform.python_version(),
          'xla_flags': os.environ.get('XLA_FLAGS', ''), 'host': platform.node()}
  try:
    import flax  # pylint: disable=g-import-not-at-top
    info['flax'] = flax.__version__
  except ImportError:
    pass
  cpu = cpuinfo()
  if cpu:
    info['cpu_model'] = cpu.get('model name')
    info['cpu_mhz'] = float(cpu.get('cpu MHz') or 0) or None
    info['cpu_avx512'] = 'avx512f' in cpu.get('flags', '').split()
  info['cpu_cores'] = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
  if hasattr(os, 'getloadavg'):
    info['load_avg_1_5_15'] = [round(v, 2) for v in os.getloadavg()]
  return info


def device_peak(info: dict, dtype: str, override_tflops: float | None = None) -> tuple[float | None, str]:
  """(peak FLOP/s, where it comes from) for `dtype` on this device; CPUs get a labelled estimate."""
  if override_tflops:
    return override_tflops * 1e12, f'--peak_tflops={override_tflops}'
  kind = info['device_kind']
  for name, peaks in PEAKS:
    if name.lower() in kind.lower():
      peak = peaks[dtype]
      return (peak * 1e12 if peak else None), f'{name} data sheet, {dtype}' + ('' if peak else ': none stated')
  if info['backend'] == 'cpu' and info.get('cpu_mhz'):
    per_cycle = 64 if info.get('cpu_avx512') else 32  # 2 FMA units × 16 (8) float32 lanes × 2 FLOPs
    peak = info['cpu_cores'] * info['cpu_mhz'] * 1e6 * per_cycle
    return peak, (f'estimate: {info["cpu_cores"]} cores × {info["cpu_mhz"]:.0f} MHz × {per_cycle} float32 '
                  'FLOP/cycle (AVX-512 FMA), not a measured roofline')
  return None, f'no peak known for {kind!r} (pass --peak_tflops)'


def _cost(analysis) -> dict:
  """XLA's cost analysis as a dict ({} where the backend gives none)."""
  analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
  return dict(analysis or {})


def cost_of(lowered, compiled) -> dict:
  """FLOPs of the program as written, bytes accessed and memory of the compiled one (XLA's analyses).

  FLOPs come from the lowered program, where the backend analyses it (CPU): the compiled program's count
  depends on the backend, and on GPUs it leaves out the convolutions that XLA hands to cuDNN (0.7 of the
  422 GFLOP per image of p = 33 inference). Where the lowered program has no analysis (GPUs, jax 0.11),
  no FLOPs are reported: take them from `--flops_only` on a CPU, the same program.
  """
  out = {}
  try:
    flops = _cost(lowered.cost_analysis()).get('flops')
    if flops:
      out['flops'] = float(flops)
    else:
      out['flops_note'] = 'no cost analysis of the lowered program on this backend: use --flops_only on a CPU'
    out['bytes_accessed'] = float(_cost(compiled.cost_analysis()).get('bytes accessed', 0.0)) or None
  except Exception as e:  # pylint: disable=broad-except (backends without cost analysis)
    out['cost_analysis_error'] = repr(e)
  try:
    mem = compiled.memory_analysis()
    out['compiled_temp_bytes'] = int(mem.temp_size_in_bytes)
    out['compiled_argument_bytes'] = int(mem.argument_size_in_bytes)
    out['compiled_output_bytes'] = int(mem.output_size_in_bytes)
  except Exception:  # pylint: disable=broad-except
    pass
  return out


def peak_memory() -> dict:
  """Device peak bytes in use where the backend reports it (GPU, TPU); host peak RSS always."""
  out = {'host_peak_rss_bytes': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
  stats = jax.devices()[0].memory_stats()
  if stats and 'peak_bytes_in_use' in stats:
    out['device_peak_bytes'] = int(stats['peak_bytes_in_use'])
  return out


def summary(times: list[float]) -> dict:
  """Median and spread (min, max, relative interquartile range) of per-repetition times."""
  q = np.percentile(times, [25, 75]) if len(times) > 1 else (times[0], times[0])
  median = statistics.median(times)
  return {'median_s': median, 'min_s': min(times), 'max_s': max(times),
          'iqr_rel': float((q[1] - q[0]) / median) if median else 0.0, 'reps': len(times)}


@dataclasses.dataclass
class Runner:
  """One side (JAX or torch) of one mode: `run(n)` executes n iterations and blocks until they are done."""
  name: str
  mode: str
  batch: int
  run: Callable[[int], None] | None  # None: it failed to build (`info['error']`)
  iters: int = 1
  info: dict = dataclasses.field(default_factory=dict)
  times: list = dataclasses.field(default_factory=list)


def with_forms(nets: gcad.GCADNets, dense_form: str | None = None, up_form: str | None = None,
               stride_form: str | None = None) -> gcad.GCADNets:
  """`nets` with E_loc's dense form (teacher.DENSE_FORMS), the U-Nets' up-convolution (unet.UP_FORMS) and
  E_glo's stride-2 layers (global_net.STRIDE_FORMS) set; None keeps the model's default."""
  if stride_form:
    nets = dataclasses.replace(nets, e_glo=nets.e_glo.clone(stride_form=stride_form))
  if dense_form:
    nets = dataclasses.replace(nets, e_loc=nets.e_loc.clone(dense_form=dense_form))
  if up_form:
    nets = dataclasses.replace(nets, r_loc=nets.r_loc.clone(up_form=up_form), r_glo=nets.r_glo.clone(up_form=up_form))
  return nets


def jax_runners(config: Any, p: int, modes: tuple[str, ...], batch: int, iters: int, seed: int = 0,
                forms: dict | None = None, name: str = 'jax') -> list[Runner]:
  """Compiled JAX programs of `modes` (compile time, cost analysis) wrapped as Runners."""
  nets = with_forms(gcad.build_nets(config, p), **(forms or {}))
  height, width = config.dataset.image_size
  key = jax.random.key(seed)
  state, frozen = jax.jit(functools.partial(make_state, config, nets))(key)
  rng = np.random.default_rng(seed)
  runners = []
  for mode in modes:
    b = 1 if mode == 'latency' else batch
    x = jnp.asarray(rng.normal(size=(b, height, width, 3)), jnp.float32)
    if mode in ('train', 'train_cached'):
      step = functools.partial(train_step, nets=nets, config=config)
      args = [state, frozen, x]
      if mode == 'train_cached':
        args.append(jax.jit(lambda fr, x: gcad.eloc_features(nets, fr['e_loc'], fr['stats'], x))(frozen, x))
      fn = jax.jit(step, donate_argnums=0)
    elif mode in ('infer', 'latency'):
      fn = jax.jit(functools.partial(infer, nets=nets))
      args = [state, frozen, x]
    else:
      fn = jax.jit(functools.partial(forward, nets=nets, net=mode))
      args = [state, frozen, x]
    t0 = time.perf_counter()
    try:
      lowered = fn.lower(*args)
      compiled = lowered.compile()
    except Exception as e:  # pylint: disable=broad-except (e.g. too large for the device: recorded)
      runners.append(Runner(name, mode, b, None, iters, {'error': repr(e)[:400]}))
      continue
    compile_s = time.perf_counter() - t0
    info = {'compile_s': compile_s, **cost_of(lowered, compiled)}
    if mode in ('train', 'train_cached'):
      holder = {'state': jax.tree.map(jnp.copy, state)}

      def run(n, compiled=compiled, rest=args[1:], holder=holder):
        loss = None
        for _ in range(n):  # No host sync inside: the state stays on the device, donated step to step.
          holder['state'], loss = compiled(holder['state'], *rest)
        jax.block_until_ready(loss)
    else:
      def run(n, compiled=compiled, args=args):
        if mode == 'latency':
          for _ in range(n):
            jax.block_until_ready(compiled(*args))
        else:
          out = None
          for _ in range(n):
            out = compiled(*args)
          jax.block_until_ready(out)
    runners.append(Runner(name, mode, b, run, iters, info))
  return runners


def flop_counts(config: Any, p: int, batch: int, modes: tuple[str, ...] = ('train', 'infer')) -> dict:
  """GFLOPs per image of `modes` from XLA's cost analysis of the lowered (unoptimised) programs: no compile,
  no parameters allocated (`--flops_only`; for projections at paper size on any machine)."""
  nets = gcad.build_nets(config, p)
  height, width = config.dataset.image_size
  state, frozen = jax.eval_shape(functools.partial(make_state, config, nets), jax.random.key(0))
  x = jax.ShapeDtypeStruct((batch, height, width, 3), jnp.float32)
  fns = {'train': functools.partial(train_step, nets=nets, config=config),
         'infer': functools.partial(infer, nets=nets)}
  out = {}
  for mode in modes:
    flops = _cost(jax.jit(fns[mode]).lower(state, frozen, x).cost_analysis()).get('flops')
    if not flops:
      raise RuntimeError(f'--flops_only: the {jax.default_backend()} backend gives no cost analysis of the '
                         'lowered program; run it on a CPU (the count does not depend on the machine)')
    out[mode] = float(flops) / batch / 1e9
  return out


def load_torch_reference(path: str | None = None) -> types.ModuleType:
  """benchmarks/torch_reference.py as a module: `path`, else the one in the checkout this gcad_jax runs from.

  The benchmarks are not part of the installed package: an installed gcad_jax needs `--torch_reference`.
  """
  checkout = pathlib.Path(__file__).resolve().parents[1] / 'benchmarks' / 'torch_reference.py'
  file = pathlib.Path(path) if path else checkout
  if not file.is_file():
    how = ('' if path else f'this gcad_jax ({pathlib.Path(__file__).parent}) is not a source checkout, so ') + (
        f'{file} does not exist')
    raise FileNotFoundError(f'--torch: {how}; pass --torch_reference=PATH/TO/benchmarks/torch_reference.py '
                            '(from a checkout of gcad_jax)')
  spec = importlib.util.spec_from_file_location('torch_reference', file)
  ref = importlib.util.module_from_spec(spec)
  sys.modules['torch_reference'] = ref
  spec.loader.exec_module(ref)
  return ref


def torch_runners(config: Any, p: int, modes: tuple[str, ...], batch: int, iters: int,
                  formats: tuple[str, ...] = ('nchw', 'channels_last'), seed: int = 0,
                  reference: str | None = None) -> list[Runner]:
  """The same modes in benchmarks/torch_reference.py (eager; `reference`: its path), per memory format."""
  ref = load_torch_reference(reference)
  import torch  # pylint: disable=g-import-not-at-top (optional: the `bench` extra)
  runners = []
  for fmt in formats:
    channels_last = fmt == 'channels_last'
    model = ref.build(config, p, channels_last=channels_last, seed=seed)
    for mode in modes:
      b = 1 if mode == 'latency' else batch
      x = ref.random_images(config, b, channels_last=channels_last, seed=seed)
      if mode in ('train', 'train_cached'):
        f = model.features(x) if mode == 'train_cached' else None

        def run(n, x=x, f=f, model=model):
          for _ in range(n):
            model.train_step(x, f=f)
      elif mode in ('infer', 'latency'):
        def run(n, x=x, model=model):
          for _ in range(n):
            model.anomaly_maps(x)
      else:
        def run(n, x=x, net=getattr(model, mode), skips=[0.0] * config.eglo.skip_levels, mode=mode):
          with torch.inference_mode():
            for _ in range(n):
              net(x, skips) if mode == 'e_glo' else net(x)
      runners.append(Runner(f'torch_{fmt}', mode, b, run, iters,
                            {'torch': torch.__version__, 'threads': torch.get_num_threads()}))
  return runners


def measure(runners: list[Runner], reps: int, warmup: int = 1) -> None:
  """Warm-up, then `reps` rounds; each round times every runner once, in alternating order (interleaved)."""
  live = []
  for r in runners:
    if r.run is None:
      continue
    try:  # E.g. out of device memory at a large batch: recorded, the other runners go on.
      r.run(warmup)
      live.append(r)
    except Exception as e:  # pylint: disable=broad-except
      r.info['error'] = repr(e)[:400]
  for rep in range(reps):
    for r in (live if rep % 2 == 0 else live[::-1]):
      t0 = time.perf_counter()
      r.run(r.iters)
      r.times.append((time.perf_counter() - t0) / r.iters)
    print(f'repetition {rep + 1}/{reps}: ' + ', '.join(f'{r.name} {r.mode} {r.times[-1]:.3g} s' for r in live),
          file=sys.stderr, flush=True)


def results(runners: list[Runner], info: dict, dtype: str, peak_tflops: float | None) -> list[dict]:
  """One row per runner: times, images/s, FLOP/s, fraction of peak; ratios of torch to JAX per mode."""
  peak, peak_source = device_peak(info, dtype, peak_tflops)
  rows = []
  for r in runners:
    if not r.times:
      rows.append({'impl': r.name, 'mode': r.mode, 'batch': r.batch, **r.info})
      continue
    row = {'impl': r.name, 'mode': r.mode, 'batch': r.batch, **summary(r.times), **r.info}
    row['images_per_s'] = r.batch / row['median_s']
    if r.mode == 'latency':
      row['latency_ms'] = 1e3 * row['median_s']
    if r.name.startswith('jax') and row.get('flops'):
      row['gflops_per_image'] = row['flops'] / r.batch / 1e9
      row['achieved_tflops'] = row['flops'] / row['median_s'] / 1e12
      if peak:
        row['fraction_of_peak'] = row['flops'] / row['median_s'] / peak
        row['peak_tflops'], row['peak_source'] = peak / 1e12, peak_source
    rows.append(row)
  jax_by_mode = {r.mode: r for r in runners if r.name == 'jax'}
  for row, r in zip(rows, runners):
    if r.name != 'jax' and r.mode in jax_by_mode and r.times and jax_by_mode[r.mode].times:
      ratios = [t / j for t, j in zip(r.times, jax_by_mode[r.mode].times)]  # > 1: JAX faster
      row['speedup_of_jax'] = statistics.median(ratios)
      row['speedup_of_jax_range'] = [min(ratios), max(ratios)]
  return rows


def table(rows: list[dict]) -> str:
  """A plain-text table of the rows; `jax×` = this row's time / the default JAX row's (> 1: JAX faster)."""
  head = ('impl', 'mode', 'batch', 'median', 'spread', 'img/s', 'GFLOP/img', 'TFLOP/s', '%peak', 'compile', 'jax×')
  width = max([len(r['impl']) for r in rows] + [4])
  lines = ['  '.join(f'{h:>12}' if i else f'{h:<{width}}' for i, h in enumerate(head))]
  fmt = lambda v, spec: '-' if v is None else format(v, spec)
  for r in rows:
    if 'median_s' not in r:
      lines.append(f'{r["impl"]:<{width}}  {r["mode"]:>12}  {r["batch"]:>12}  failed: {r.get("error")}')
      continue
    cells = (r['impl'], r['mode'], str(r['batch']), f'{r["median_s"] * 1e3:.1f} ms',
             f'{r["min_s"] * 1e3:.0f}–{r["max_s"] * 1e3:.0f}', fmt(r.get('images_per_s'), '.2f'),
             fmt(r.get('gflops_per_image'), '.1f'), fmt(r.get('achieved_tflops'), '.3f'),
             fmt(r.get('fraction_of_peak') and 100 * r['fraction_of_peak'], '.1f'),
             fmt(r.get('compile_s'), '.1f'), fmt(r.get('speedup_of_jax'), '.2f'))
    lines.append('  '.join(f'{c:>12}' if i else f'{c:<{width}}' for i, c in enumerate(cells)))
  return '\n'.join(lines)


def run(config: Any, p: int, *, modes: tuple[str, ...], batch: int, reps: int, iters: int = 1, warmup: int = 1,
        with_torch: bool = False, torch_formats: tuple[str, ...] = ('nchw', 'channels_last'),
        torch_reference: str | None = None, peak_tflops: float | None = None, label: str = '', forms: dict | None = None,
        ab: tuple[dict, ...] = ()) -> dict:
  """Builds, compiles, warms up and times; returns the JSON-ready result."""
  unknown = set(modes) - set(MODES)
  if unknown:
    raise ValueError(f'--modes: {sorted(unknown)} not in {list(MODES)}')
  info = machine()
  serve, modes = 'serve' in modes, tuple(m for m in modes if m != 'serve')
  runners = jax_runners(config, p, modes, batch, iters, forms=forms) if modes else []
  for variant in ab:  # Interleaved A/B of the model's forms: 'jax[up_form=conv_transpose]' against 'jax'.
    name = 'jax[' + ','.join(f'{k}={v}' for k, v in variant.items()) + ']'
    runners += jax_runners(config, p, modes, batch, iters, forms={**(forms or {}), **variant}, name=name)
  if with_torch and modes:
    runners += torch_runners(config, p, modes, batch, iters, torch_formats, reference=torch_reference)
  if serve:
    from gcad_jax import serve_bench  # pylint: disable=g-import-not-at-top
    runners += serve_bench.runners(config, p, batch, iters, with_torch=with_torch, torch_reference=torch_reference)
  measure(runners, reps, warmup)
  nets = gcad.build_nets(config, p)
  params = jax.eval_shape(lambda k: gcad.init_params(nets, k, tuple(config.dataset.image_size)), jax.random.key(0))
  return {'label': label, 'scale': p, 'forms': forms or {}, 'image_size': list(config.dataset.image_size),
          'dtype': config.model.dtype, 'batch': batch, 'reps': reps, 'iters': iters, 'trainable_params': gcad.param_count(params[0]),
          'e_loc_params': gcad.param_count(params[1]), 'machine': info, 'memory': peak_memory(),
          'rows': results(runners, info, config.model.dtype, peak_tflops), 'time': time.strftime('%Y-%m-%dT%H:%M:%S%z')}


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog='python -m gcad_jax.bench', description=__doc__.split('\n')[0])
  parser.add_argument('--preset', default='cpu', help=f'one of {list(PRESETS)} (ignored with --config)')
  parser.add_argument('--config', default=None, help='a config file, e.g. configs/loco.py (imports ml_collections)')
  parser.add_argument('--scale', type=int, default=None, help='p (default: the preset\'s, or the config\'s last)')
  parser.add_argument('--batch', type=int, default=None, help='default: the config\'s train.batch_size')
  parser.add_argument('--dtype', default=None, choices=('float32', 'bfloat16'), help='model.dtype (compute)')
  parser.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                      help='override a config field, e.g. --set=unet.depth=4 (a Python literal; repeatable)')
  parser.add_argument('--modes', default='train,infer,latency', help=f'comma-separated, of {list(MODES)}')
  parser.add_argument('--dense_form', default=None, choices=teacher.DENSE_FORMS,
                      help='how the dense E_loc is evaluated (default: the model\'s, dilated)')
  parser.add_argument('--up_form', default=None, choices=unet.UP_FORMS,
                      help='the U-Nets\' 2×2 up-convolution (default: the model\'s, subpixel)')
  parser.add_argument('--stride_form', default=None, choices=global_net.STRIDE_FORMS,
                      help='E_glo\'s stride-2 layers (default: the model\'s, subpixel)')
  parser.add_argument('--ab', action='append', default=[], metavar='FORM=VALUE',
                      help='also time the model with this form, interleaved (e.g. --ab=up_form=conv_transpose)')
  parser.add_argument('--reps', type=int, default=5)
  parser.add_argument('--iters', type=int, default=1, help='iterations per timed repetition')
  parser.add_argument('--warmup', type=int, default=1)
  parser.add_argument('--torch', action='store_true', help='interleave benchmarks/torch_reference.py')
  parser.add_argument('--torch_formats', default='nchw,channels_last')
  parser.add_argument('--torch_reference', default=None,
                      help='path of benchmarks/torch_reference.py (default: the checkout gcad_jax runs from)')
  parser.add_argument('--keep_xla_flags', action='store_true', help=f'do not add {" ".join(CPU_XLA_FLAGS)}')
  parser.add_argument('--peak_tflops', type=float, default=None, help='override the device peak')
  parser.add_argument('--flops_only', action='store_true', help='only FLOPs per image of train and infer, no run')
  parser.add_argument('--out', default=None, help='JSON path (appends to a list if the file exists)')
  parser.add_argument('--label', default='')
  return parser.parse_args(argv)


def _override(item: str) -> tuple[str, Any]:
  key, sep, value = item.partition('=')
  if not sep:
    raise ValueError(f'--set={item!r}: expected KEY=VALUE, e.g. --set=unet.depth=4')
  try:
    return key, ast.literal_eval(value)
  except (ValueError, SyntaxError):
    return key, value  # A bare string, e.g. --set=eloc.pad_mode=reflect


def main(argv=None) -> dict:
  args = parse_args(argv)
  if not args.keep_xla_flags and not set_cpu_xla_flags():
    print(f'note: {CPU_XLA_FLAGS} not applied (JAX already started, jaxlib not 0.10.x, or '
          'GCAD_JAX_KEEP_XLA_FLAGS set); '
          f'XLA_FLAGS={os.environ.get("XLA_FLAGS", "")!r}')
  overrides = dict(_override(item) for item in args.set)
  if args.dtype:
    overrides['model.dtype'] = args.dtype
  if args.config:
    config, p = file_config(args.config, args.scale, **overrides)
  else:
    config, p = preset_config(args.preset, **overrides)
    p = args.scale or p
  batch = args.batch or config.train.batch_size
  if args.flops_only:
    counts = flop_counts(config, p, batch)
    print(f'p={p} {tuple(config.dataset.image_size)} batch {batch}: GFLOPs per image (lowered HLO) {counts}')
    return {'scale': p, 'batch': batch, 'gflops_per_image': counts}
  result = run(config, p, modes=tuple(m for m in args.modes.split(',') if m), batch=batch, reps=args.reps,
               iters=args.iters, warmup=args.warmup, with_torch=args.torch,
               torch_formats=tuple(args.torch_formats.split(',')), torch_reference=args.torch_reference,
               peak_tflops=args.peak_tflops,
               label=args.label or (args.config or args.preset),
               forms={k: v for k in ('dense_form', 'up_form', 'stride_form') if (v := getattr(args, k))},
               ab=tuple(dict([_override(item)]) for item in args.ab))
  result['argv'] = sys.argv[1:] if argv is None else list(argv)
  m = result['machine']
  print(f'{result["label"]}: p={p} {result["image_size"][0]}² {result["dtype"]} batch {batch}, '
        f'{result["trainable_params"] / 1e6:.1f} M trainable + {result["e_loc_params"] / 1e6:.2f} M E_loc; '
        f'{m["device_kind"]} ({m["backend"]}), {m.get("cpu_model")}, {m["cpu_cores"]} cores, '
        f'load {m.get("load_avg_1_5_15")}')
  print(table(result['rows']))
  peak_rows = [r for r in result['rows'] if r.get('peak_source')]
  if peak_rows:
    print(f'peak: {peak_rows[0]["peak_tflops"]:.3g} TFLOP/s ({peak_rows[0]["peak_source"]})')
  print(f'memory: {result["memory"]}')
  if args.out:
    path = pathlib.Path(args.out)
    previous = json.loads(path.read_text()) if path.exists() else []
    previous = previous if isinstance(previous, list) else [previous]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(previous + [result], indent=1, default=str))
    print(f'wrote {path}')
  return result


if __name__ == '__main__':
  main()
