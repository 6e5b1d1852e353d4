"""The device mesh and the mapping of a per-device step over it: the one place that knows devices.

docs/method.md §13: a train step is written per device, with an explicit `lax.pmean(grads, 'data')`, and mapped
over a one-axis mesh named `data` with `jax.shard_map` inside `jax.jit` (batch `P('data')`, state `P()`),
or with `jax.pmap` of the same function (`config.parallel = 'pmap'`). The helpers below hide the one
difference between the two: under pmap the state carries a leading axis of local devices.
`DataParallel` carries the mode and the mesh together, built once from the config, so that callers pass
one object instead of a mode string and a mesh.

Multi-host: every process runs the same program, feeds its own slice of each global batch
(`process_rows`), and `shard_batch` assembles the global array with `jax.make_array_from_process_local_data`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from gcad_jax import configlib

AXIS = 'data'
MODES = ('shard_map', 'pmap')


def maybe_initialize_distributed(config, force: bool = False) -> None:
  """Calls `jax.distributed.initialize()` (multi-host; Cloud TPU pods) when `config.distributed` or `force`."""
  if config.get('distributed', False) or force:
    jax.distributed.initialize()
    logging.info('jax.distributed: process %d of %d, %d local / %d global devices', jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count())


def make_mesh(devices=None) -> Mesh:
  """A one-axis mesh named `data` over all devices of all processes (docs/method.md §13)."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (AXIS,))


def check_batch_size(config, num_devices: int | None = None) -> int:
  """The per-device batch; refuses a global `config.train.batch_size` the devices do not divide."""
  num_devices = jax.device_count() if num_devices is None else num_devices
  batch = config.train.batch_size
  if batch % num_devices:
    raise configlib.ConfigError(
        f'config.train.batch_size: {batch} is not divisible by the {num_devices} devices '
        f'(data parallelism splits the global batch evenly); use a multiple of {num_devices}')
  return batch // num_devices


def process_rows(global_batch: int) -> slice:
  """The rows of a global batch that this process feeds (its devices' contiguous block of the mesh)."""
  if global_batch % jax.process_count():
    raise ValueError(f'global batch {global_batch} does not split over {jax.process_count()} processes')
  local = global_batch // jax.process_count()
  return slice(jax.process_index() * local, (jax.process_index() + 1) * local)


def padded_batches(num_examples: int, batch: int, num_devices: int = 1) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """(indices, mask) per batch of `batch` rows rounded up to the device count; padding repeats the last image."""
  batch = -(-max(1, batch) // num_devices) * num_devices
  for start in range(0, num_examples, batch):
    index = np.arange(start, start + batch)
    yield np.minimum(index, num_examples - 1), (index < num_examples).astype(np.float32)


def map_per_device(step_fn: Callable, mode: str, mesh: Mesh, *, num_replicated: int = 1,
                   donate: bool = True) -> Callable:
  """Maps `step_fn(*replicated, *sharded) -> replicated outputs` over the `data` axis.

  The first `num_replicated` arguments (the state) are replicated and donated; the rest (the batch) are
  split along their leading axis. Outputs must be device-invariant (e.g. after `lax.pmean`).
  """
  if mode not in MODES:
    raise configlib.ConfigError(f'config.parallel: {mode!r} is not one of {list(MODES)}')
  donate_argnums = tuple(range(num_replicated)) if donate else ()
  if mode == 'pmap':
    return jax.pmap(step_fn, axis_name=AXIS, donate_argnums=donate_argnums)

  def wrapped(*args):
    in_specs = (P(),) * num_replicated + (P(AXIS),) * (len(args) - num_replicated)
    # check_vma=False gives pmap's semantics: a gradient w.r.t. the replicated state stays per device, so
    # the step's explicit pmean averages it (with check_vma=True the transpose would already psum it).
    return jax.shard_map(step_fn, mesh=mesh, in_specs=in_specs, out_specs=P(), check_vma=False)(*args)

  return jax.jit(wrapped, donate_argnums=donate_argnums)


def replicate(tree: Any, mode: str, mesh: Mesh) -> Any:
  """Places a host (or single-device) tree on every device: `P()` under shard_map, stacked under pmap."""
  # Every device gets its own copy: on CPU a device buffer may alias the host array it came from, and the
  # mapped step donates (overwrites) these buffers.
  if mode == 'pmap':
    local = Mesh(np.asarray(jax.local_devices()), (AXIS,))
    sharding = NamedSharding(local, P(AXIS))
    return jax.tree.map(lambda x: jax.device_put(np.stack([np.asarray(x)] * local.size), sharding), tree)
  sharding = NamedSharding(mesh, P())

  def put(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: np.array(x[index], copy=True))

  return jax.tree.map(put, tree)


def unreplicate(tree: Any, mode: str) -> Any:
  """One host (numpy) copy of a replicated tree; works on any process of a multi-host run.

  A copy, not a view: the device buffers may be donated to the next step while the copy is still in use.
  """

  def get(x):
    if not isinstance(x, jax.Array):
      return np.array(x, copy=True)
    local = np.array(x.addressable_shards[0].data, copy=True)
    return local[0] if mode == 'pmap' else local

  return jax.tree.map(get, tree)


def shard_batch(local_batch: Any, mode: str, mesh: Mesh) -> Any:
  """This process's rows of a global batch → the array(s) the mapped step takes (split over `data`)."""
  if mode == 'pmap':
    n = jax.local_device_count()
    return jax.tree.map(lambda x: np.asarray(x).reshape((n, -1) + np.shape(x)[1:]), local_batch)
  sharding = NamedSharding(mesh, P(AXIS))
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)


@dataclasses.dataclass(frozen=True, eq=False)
class DataParallel:
  """The mode ('shard_map' or 'pmap', `config.parallel`) and the mesh, with the helpers above bound to them."""
  mode: str
  mesh: Mesh

  def __post_init__(self):
    if self.mode not in MODES:
      raise configlib.ConfigError(f'config.parallel: {self.mode!r} is not one of {list(MODES)}')

  @classmethod
  def from_config(cls, config, mesh: Mesh | None = None) -> DataParallel:
    """`config.parallel` over `mesh` (default: all devices, `make_mesh`)."""
    return cls(config.parallel, make_mesh() if mesh is None else mesh)

  @property
  def size(self) -> int:
    return self.mesh.size

  def map(self, step_fn: Callable, *, num_replicated: int = 1, donate: bool = True) -> Callable:
    return map_per_device(step_fn, self.mode, self.mesh, num_replicated=num_replicated, donate=donate)

  def replicate(self, tree: Any) -> Any:
    return replicate(tree, self.mode, self.mesh)

  def unreplicate(self, tree: Any) -> Any:
    return unreplicate(tree, self.mode)

  def shard(self, local_batch: Any) -> Any:
    return shard_batch(local_batch, self.mode, self.mesh)

  def map_over_all(self, fn: Callable, replicated: Any, images: np.ndarray, batch: int) -> Any:
    """Runs a per-device `fn(replicated, images, mask)` over every image once, in global batches of `batch`
    (the last padded and masked); returns the host sum over batches of its psummed outputs, in float64."""
    mapped = self.map(fn, donate=False)
    rows = process_rows(batch)
    outputs = []
    for index, mask in padded_batches(len(images), batch):
      outputs.append(mapped(replicated, *self.shard((images[index[rows]], mask[rows]))))
    outputs = [self.unreplicate(o) for o in outputs]
    return jax.tree.map(lambda *xs: np.sum(np.stack(xs).astype(np.float64), axis=0), *outputs)

  def state_sharding(self) -> jax.sharding.Sharding:
    """Where a restored host state lands before `replicate`: one device under pmap, `P()` under shard_map."""
    if self.mode == 'pmap':
      return jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return NamedSharding(self.mesh, P())
