r"""The GCAD benchmark: training and inference speed, latency, compile time, memory and FLOPs (issue 6).

  python -m gcad_jax.bench --preset=cpu                            # configs/synthetic.py, p = 17
  python -m gcad_jax.bench --preset=paper_p33 --batch=1 --torch    # configs/loco.py, against the PyTorch reference
  python -m gcad_jax.bench --config=configs/loco.py --scale=33 --dtype=bfloat16 --batch=64 --out=b.json

Measures, after warm-up and over `--reps` repetitions (median and spread), on random inputs: `train`
(`gcad_jax.train.train_step` in stage 2, docs/method.md §7.5: augmentation as the config sets it, dense E_loc,
E_glo, U, R_loc, R_glo, Eq. 2–5, two Adam updates), `train_cached` (the same step with E_loc's features given
and no augmentation, as `train.cache_eloc` trains), `infer` (the anomaly maps of §8 step 1) and `latency`
(`infer` at batch 1, one blocked call each). Per mode: compile time, FLOPs per image from XLA's cost
analysis, the achieved FLOP/s and its fraction of the device's stated peak, and memory. `--torch`
interleaves the same modes of benchmarks/torch_reference.py (eager, NCHW and channels_last, no augmentation)
repetition by repetition and reports the median of the per-repetition time ratios.

`--ab=up_form=conv_transpose` (or stride_form=conv, dense_form=space_to_batch, or a config field such as
augment.enabled=False) also times the model with another layer form or setting, interleaved; `--flops_only`
prints the FLOPs per image without compiling. Results, tables and the machine: docs/performance.md. The
programs themselves are built in `gcad_jax.bench_runners`.

The presets are the config files of a checkout (PRESETS); `--config` names any config file. Imports jax,
flax, optax, orbax and ml_collections (a pure-Python wheel to carry to an accelerator image: docs/performance.md),
never clu, TensorFlow or TFDS; torch only with `--torch`.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import pathlib
import platform
import resource
import statistics
import sys
import time
from typing import Any

import jax
import numpy as np

from gcad_jax import bench_runners, configlib
from gcad_jax.bench_runners import Runner
from gcad_jax.models import gcad, global_net, teacher, unet
from gcad_jax.xla_cpu import CPU_XLA_FLAGS, cpuinfo, set_cpu_xla_flags

# name: (config file of the checkout, p). `cpu` trains without augmentation, as configs/synthetic.py does;
# the paper presets with it, as configs/loco.py does.
PRESETS = {'paper_p33': ('configs/loco.py', 33), 'paper_p17': ('configs/loco.py', 17),
           'cpu': ('configs/synthetic.py', 17), 'tiny': ('configs/tiny.py', 17)}

FORMS = ('dense_form', 'up_form', 'stride_form')  # the model's layer forms (bench_runners.with_forms)
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


def file_config(path: str, scale: int | None, **overrides: Any) -> tuple[Any, int]:
  """(ConfigDict, p) of a config file `path[:argument]` with dotted `overrides`; p defaults to its last scale."""
  config = configlib.load_config(path, overrides)
  return config, tuple(config.model.scales)[-1] if scale is None else scale


def preset_config(name: str, **overrides: Any) -> tuple[Any, int]:
  """(ConfigDict, p) of a preset: its config file in the checkout, e.g. {'model.dtype': 'bfloat16'} applied."""
  if name not in PRESETS:
    raise ValueError(f'--preset={name!r} is not one of {list(PRESETS)}')
  file, p = PRESETS[name]
  path = bench_runners.CHECKOUT / file
  if not path.is_file():
    raise FileNotFoundError(
        f'--preset={name} is {file} of a gcad_jax checkout, and this gcad_jax ({pathlib.Path(__file__).parent}) '
        f'is not one; pass --config=PATH/TO/{file} --scale={p}')
  return file_config(str(path), p, **overrides)


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
  runners = bench_runners.jax_runners(config, p, modes, batch, iters, forms=forms) if modes else []
  for variant in ab:  # Interleaved A/B, e.g. 'jax[up_form=conv_transpose]' or 'jax[augment.enabled=False]'.
    name = 'jax[' + ','.join(f'{k}={v}' for k, v in variant.items()) + ']'
    fields = {k: v for k, v in variant.items() if k not in FORMS}
    changed = configlib.override(config.copy_and_resolve_references(), fields) if fields else config
    runners += bench_runners.jax_runners(changed, p, modes, batch, iters, name=name,
                                         forms={**(forms or {}), **{k: v for k, v in variant.items() if k in FORMS}})
  if with_torch and modes:
    runners += bench_runners.torch_runners(config, p, modes, batch, iters, torch_formats, reference=torch_reference)
  if serve:
    from gcad_jax import serve_bench  # pylint: disable=g-import-not-at-top
    runners += serve_bench.runners(config, p, batch, iters, with_torch=with_torch, torch_reference=torch_reference)
  measure(runners, reps, warmup)
  nets = gcad.build_nets(config, p)
  params = jax.eval_shape(lambda k: gcad.init_params(nets, k, tuple(config.dataset.image_size)), jax.random.key(0))
  return {'label': label, 'scale': p, 'forms': forms or {}, 'image_size': list(config.dataset.image_size),
          'dtype': config.model.dtype, 'augment': bool(config.augment.enabled), 'batch': batch, 'reps': reps,
          'iters': iters, 'trainable_params': gcad.param_count(params[0]),
          'e_loc_params': gcad.param_count(params[1]), 'machine': info, 'memory': peak_memory(),
          'rows': results(runners, info, config.model.dtype, peak_tflops), 'time': time.strftime('%Y-%m-%dT%H:%M:%S%z')}


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog='python -m gcad_jax.bench', description=__doc__.split('\n')[0])
  parser.add_argument('--preset', default='cpu', help=f'one of {list(PRESETS)} (ignored with --config)')
  parser.add_argument('--config', default=None, help='a config file[:argument], e.g. configs/loco.py:pushpins')
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
                      help='also time the model with this form or config field, interleaved (e.g. '
                           '--ab=up_form=conv_transpose, --ab=augment.enabled=False)')
  parser.add_argument('--reps', type=int, default=5)
  parser.add_argument('--iters', type=int, default=1, help='iterations per timed repetition')
  parser.add_argument('--warmup', type=int, default=1)
  parser.add_argument('--torch', action='store_true', help='interleave benchmarks/torch_reference.py')
  parser.add_argument('--torch_formats', default='nchw,channels_last')
  parser.add_argument('--torch_reference', default=None,
                      help=f'path of benchmarks/torch_reference.py (default: ${bench_runners.TORCH_REFERENCE_ENV}, '
                           'else the checkout gcad_jax runs from)')
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
    counts = bench_runners.flop_counts(config, p, batch)
    print(f'p={p} {tuple(config.dataset.image_size)} batch {batch}: GFLOPs per image (lowered HLO) {counts}')
    return {'scale': p, 'batch': batch, 'gflops_per_image': counts}
  result = run(config, p, modes=tuple(m for m in args.modes.split(',') if m), batch=batch, reps=args.reps,
               iters=args.iters, warmup=args.warmup, with_torch=args.torch,
               torch_formats=tuple(args.torch_formats.split(',')), torch_reference=args.torch_reference,
               peak_tflops=args.peak_tflops,
               label=args.label or (args.config or args.preset),
               forms={k: v for k in FORMS if (v := getattr(args, k))},
               ab=tuple(dict([_override(item)]) for item in args.ab))
  result['argv'] = sys.argv[1:] if argv is None else list(argv)
  m = result['machine']
  print(f'{result["label"]}: p={p} {result["image_size"][0]}² {result["dtype"]} batch {batch}, '
        f'augmentation {"on" if result["augment"] else "off"}, '
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
