"""gcad_jax/serve_bench.py: `python -m gcad_jax.bench --modes=serve` on the tiny preset (issue 27 item 4)."""

from gcad_jax import bench


def test_serve_mode_times_jax_stablehlo_and_onnxruntime_at_the_batch_and_at_batch_1():
  config, p = bench.preset_config('tiny')
  result = bench.run(config, p, modes=('serve',), batch=2, reps=1)
  rows = {(r['impl'], r['mode']): r for r in result['rows']}
  assert set(rows) == {(impl, mode) for impl in ('jax', 'stablehlo', 'onnxruntime')
                       for mode in ('serve', 'serve_latency')}
  for (impl, mode), row in rows.items():
    assert 'error' not in row and row['median_s'] > 0, (impl, mode, row)
    assert row['batch'] == (2 if mode == 'serve' else 1)
    assert impl == 'jax' or row['speedup_of_jax'] > 0
  assert 'onnxruntime' in bench.table(result['rows'])
