"""The programs that `gcad_jax.bench` times, each wrapped as a `Runner`, and their FLOPs.

The JAX side is gcad_jax's own: the state of `train.create_train_state` / `train.start_rglo` and the step
`train.train_step` (docs/method.md §7.5, stage 2, with the augmentation of §7.4 as the config sets it),
mapped over a one-device mesh by `parallel.DataParallel` as training maps it; the anomaly maps of
`gcad.anomaly_maps` (§8 step 1). The PyTorch side is benchmarks/torch_reference.py (a checkout file, found
by `load_torch_reference`). Imports jax, flax, optax, orbax and ml_collections (through gcad_jax.train);
never clu, TensorFlow or TFDS; torch only for `torch_runners`.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
import pathlib
import sys
import time
import types
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from gcad_jax import configlib, eloc_stats, parallel, train
from gcad_jax.models import gcad, global_net

CHECKOUT = pathlib.Path(__file__).resolve().parents[1]  # the source checkout, where gcad_jax runs from one
TORCH_REFERENCE_ENV = 'GCAD_JAX_TORCH_REFERENCE'
STEPS_PER_EPOCH = 100  # the step's fractional epoch (skip fade, §4.3) only; the timed work does not depend on it


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


def stage2_state(config, nets: gcad.GCADNets, key: jax.Array) -> train.TrainState:
  """The training state after the stage switch (docs/method.md §7.3): random parameters, both optimiser
  states, E_loc statistics 0 and 1 (their values do not change the work)."""
  trainable, e_loc_params = gcad.init_params(nets, key, tuple(config.dataset.image_size))
  d = config.eloc.d_loc
  stats = {'mean': jnp.zeros((d,), jnp.float32), 'std': jnp.ones((d,), jnp.float32)}
  return train.start_rglo(config, train.create_train_state(config, trainable, e_loc_params, stats))


def one_device() -> parallel.DataParallel:
  """The bench's mapping: shard_map over a mesh of the first device, the per-device step as training runs it."""
  return parallel.DataParallel('shard_map', parallel.make_mesh(jax.devices()[:1]))


def train_program(config, nets: gcad.GCADNets) -> Callable:
  """`train.train_step` in stage 2, mapped and jitted as `train.train_scale` maps it (state donated)."""
  step = functools.partial(train.train_step, nets=nets, config=config, steps_per_epoch=STEPS_PER_EPOCH,
                           with_glo=True)
  return one_device().map(step)


def infer(state: train.TrainState, x: jnp.ndarray, *, nets: gcad.GCADNets) -> tuple[jnp.ndarray, jnp.ndarray]:
  """(A_loc, A_glo) of docs/method.md §8 step 1 (E_loc, R_loc, E_glo with skips at 0, R_glo)."""
  return gcad.anomaly_maps(nets, state.params, state.e_loc_params, state.eloc_stats, x)


def forward(state: train.TrainState, x: jnp.ndarray, *, nets: gcad.GCADNets, net: str) -> jnp.ndarray:
  """One network's forward pass alone (the per-network profile: modes e_loc, r_loc, e_glo)."""
  if net == 'e_loc':
    return nets.e_loc.apply({'params': state.e_loc_params}, x)
  if net == 'e_glo':
    return nets.e_glo.apply({'params': state.params['e_glo']}, x, jnp.zeros((len(global_net.SKIP_NAMES),)))
  return getattr(nets, net).apply({'params': state.params[net]}, x)


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


def _program(config, nets, mode: str, state, batch: int, rng: np.random.Generator):
  """(jitted function, its arguments, row info) of one mode; the train modes take uint8 images, as training."""
  height, width = config.dataset.image_size
  if mode in ('train', 'train_cached'):
    images = rng.integers(0, 256, (batch, height, width, 3), dtype=np.uint8)
    if mode == 'train':
      return train_program(config, nets), [state, jnp.asarray(images)], {'augment': bool(config.augment.enabled)}
    # What train.cache_eloc trains: E_loc's features given, which the config allows only without augmentation.
    cached = configlib.override(config.copy_and_resolve_references(), {'augment.enabled': False})
    host = jax.device_get({'p': state.e_loc_params, 's': state.eloc_stats})
    features, _ = eloc_stats.cached_eloc_features(cached, nets, host['p'], images, host['s'])
    return train_program(cached, nets), [state, jnp.asarray(images), jnp.asarray(features)], {'augment': False}
  x = jnp.asarray(rng.normal(size=(batch, height, width, 3)), jnp.float32)
  if mode in ('infer', 'latency'):
    return jax.jit(functools.partial(infer, nets=nets)), [state, x], {}
  return jax.jit(functools.partial(forward, nets=nets, net=mode)), [state, x], {}


def jax_runners(config, p: int, modes: tuple[str, ...], batch: int, iters: int, seed: int = 0,
                forms: dict | None = None, name: str = 'jax') -> list[Runner]:
  """Compiled JAX programs of `modes` (compile time, cost analysis) wrapped as Runners."""
  nets = with_forms(gcad.build_nets(config, p), **(forms or {}))
  state = jax.jit(functools.partial(stage2_state, config, nets))(jax.random.key(seed))
  rng = np.random.default_rng(seed)
  runners = []
  for mode in modes:
    b = 1 if mode == 'latency' else batch
    t0 = time.perf_counter()
    try:
      fn, args, info = _program(config, nets, mode, state, b, rng)
      lowered = fn.lower(*args)
      compiled = lowered.compile()
    except Exception as e:  # pylint: disable=broad-except (e.g. too large for the device: recorded)
      runners.append(Runner(name, mode, b, None, iters, {'error': repr(e)[:400]}))
      continue
    info = {'compile_s': time.perf_counter() - t0, **info, **cost_of(lowered, compiled)}
    if mode in ('train', 'train_cached'):
      holder = {'state': jax.tree.map(jnp.copy, state)}

      def run(n, compiled=compiled, rest=args[1:], holder=holder):
        metrics = None
        for _ in range(n):  # No host sync inside: the state stays on the device, donated step to step.
          holder['state'], metrics = compiled(holder['state'], *rest)
        jax.block_until_ready(metrics)
    else:
      def run(n, compiled=compiled, args=args, mode=mode):
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


def flop_counts(config, p: int, batch: int, modes: tuple[str, ...] = ('train', 'infer')) -> dict:
  """GFLOPs per image of `modes` from XLA's cost analysis of the lowered (unoptimised) programs: no compile,
  no parameters allocated (`--flops_only`; for projections at paper size on any machine)."""
  nets = gcad.build_nets(config, p)
  height, width = config.dataset.image_size
  state = jax.eval_shape(functools.partial(stage2_state, config, nets), jax.random.key(0))
  programs = {'train': (train_program(config, nets), jnp.uint8),
              'infer': (jax.jit(functools.partial(infer, nets=nets)), jnp.float32)}
  out = {}
  for mode in modes:
    fn, dtype = programs[mode]
    flops = _cost(fn.lower(state, jax.ShapeDtypeStruct((batch, height, width, 3), dtype)).cost_analysis()).get('flops')
    if not flops:
      raise RuntimeError(f'--flops_only: the {jax.default_backend()} backend gives no cost analysis of the '
                         'lowered program; run it on a CPU (the count does not depend on the machine)')
    out[mode] = float(flops) / batch / 1e9
  return out


def load_torch_reference(path: str | None = None) -> types.ModuleType:
  """benchmarks/torch_reference.py as a module: `path`, else $GCAD_JAX_TORCH_REFERENCE, else the checkout's.

  The benchmarks are not part of the installed package: an installed gcad_jax needs one of the first two.
  """
  given = path or os.environ.get(TORCH_REFERENCE_ENV)
  file = pathlib.Path(given) if given else CHECKOUT / 'benchmarks' / 'torch_reference.py'
  if not file.is_file():
    how = f'{file} does not exist' if given else (
        f'this gcad_jax ({pathlib.Path(__file__).parent}) is not a source checkout, so {file} does not exist')
    raise FileNotFoundError(f'--torch: {how}; pass --torch_reference=PATH/TO/benchmarks/torch_reference.py '
                            f'or set {TORCH_REFERENCE_ENV} (the file is in a checkout of gcad_jax)')
  spec = importlib.util.spec_from_file_location('torch_reference', file)
  ref = importlib.util.module_from_spec(spec)
  sys.modules['torch_reference'] = ref
  spec.loader.exec_module(ref)
  return ref


def torch_runners(config: Any, p: int, modes: tuple[str, ...], batch: int, iters: int,
                  formats: tuple[str, ...] = ('nchw', 'channels_last'), seed: int = 0,
                  reference: str | None = None) -> list[Runner]:
  """The same modes in benchmarks/torch_reference.py (eager, no augmentation; `reference`: its path), per
  memory format."""
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
        def run(n, x=x, net=getattr(model, mode), skips=[0.0] * len(global_net.SKIP_NAMES), mode=mode):
          with torch.inference_mode():
            for _ in range(n):
              net(x, skips) if mode == 'e_glo' else net(x)
      runners.append(Runner(f'torch_{fmt}', mode, b, run, iters,
                            {'torch': torch.__version__, 'threads': torch.get_num_threads()}))
  return runners
