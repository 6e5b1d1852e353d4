"""GCAD composed: the five networks, their parameters, the losses (Eq. 2–5) and the branch maps.

Pure functions over arrays (docs/method.md §2, §7.1–§7.2, §8 step 1). E_loc's parameters and its statistics stay
outside every optimiser state (§3.4, §13); `trainable` holds the `params` collections of R_loc, E_glo, U
and R_glo.
"""

import dataclasses
import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
from jax import lax

from gcad_jax.models import layers
from gcad_jax.models.global_net import GlobalEncoderDecoder, SKIP_NAMES, Upsampler
from gcad_jax.models.teacher import PatchTeacher, standardise
from gcad_jax.models.unet import UNet

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
REDUCTIONS = ('sum_per_image', 'mean_per_pixel')
TRAINABLE = ('r_loc', 'e_glo', 'u', 'r_glo')


@dataclasses.dataclass(frozen=True)
class GCADNets:
  """The networks of one GCAD model at one receptive field p (docs/method.md §2)."""
  e_loc: PatchTeacher
  r_loc: UNet
  e_glo: GlobalEncoderDecoder
  u: Upsampler
  r_glo: UNet


def compute_dtype(name: str) -> Any:
  """The compute dtype for `config.model.dtype` ('float32' or 'bfloat16'); parameters stay float32."""
  if name not in DTYPES:
    raise ValueError(f'config.model.dtype: {name!r} is not one of {list(DTYPES)}')
  return DTYPES[name]


def build_nets(config: Any, p: int) -> GCADNets:
  """The networks for receptive field p from the config fields eloc.*, eglo.*, u.*, unet.*, model.*.

  `config` may be any object with those attributes (an `ml_collections.ConfigDict` or a namespace).
  """
  dtype = compute_dtype(config.model.dtype)
  init = config.model.init
  unet = {'depth': config.unet.depth, 'wf': config.unet.wf, 'padding': bool(config.unet.padding),
          'dtype': dtype, 'weight_init': init}
  return GCADNets(
      e_loc=PatchTeacher(p, widths=tuple(config.eloc.widths), d_out=config.eloc.d_loc,
                         leaky_slope=config.eloc.leaky_slope, final_activation=config.eloc.final_activation,
                         p33_first_kernel=config.eloc.p33_first_kernel, pad_mode=config.eloc.pad_mode,
                         dense=True, dtype=dtype, weight_init=init),
      r_loc=UNet(config.eloc.d_loc, **unet),
      e_glo=GlobalEncoderDecoder(g=config.eglo.g, d_glo=config.eglo.d_glo,
                                 enc_channels=tuple(config.eglo.enc_channels),
                                 dec_channels=tuple(config.eglo.dec_channels),
                                 leaky_slope=config.eglo.leaky_slope, dtype=dtype, weight_init=init),
      u=Upsampler(hidden=tuple(config.u.hidden), d_out=config.eloc.d_loc, leaky_slope=config.u.leaky_slope,
                  dtype=dtype, weight_init=init),
      r_glo=UNet(config.eglo.d_glo, **unet),
  )


def init_params(nets: GCADNets, rng: jax.Array, image_shape: tuple[int, int]) -> tuple[dict, Any]:
  """(trainable, e_loc_params) for (H, W) images; `trainable` has keys r_loc, e_glo, u, r_glo.

  E_loc's parameters come back separately (frozen, outside every optimiser; §13). With `torch_default`
  everywhere, all parameters come from one random draw (`layers.torch_default_params`: fast to compile on a
  CPU); otherwise from each module's `init`.
  """
  if all(getattr(nets, field.name).weight_init == 'torch_default' for field in dataclasses.fields(nets)):
    shapes = jax.eval_shape(lambda key: _init_modules(nets, key, image_shape), rng)
    return jax.jit(lambda key: layers.torch_default_params(shapes, key))(rng)
  return _init_modules(nets, rng, image_shape)


def _init_modules(nets: GCADNets, rng: jax.Array, image_shape: tuple[int, int]) -> tuple[dict, Any]:
  """`init_params` by each module's `init`, on the smallest input whose parameters match (H, W)'s."""
  height, width = image_shape
  keys = jax.random.split(rng, 5)
  zeros = lambda *shape: jnp.zeros(shape, jnp.float32)
  p = nets.e_loc.p
  trainable = {
      'r_loc': nets.r_loc.init(keys[1], zeros(1, *_unet_init_size(nets.r_loc, image_shape), 3))['params'],
      'e_glo': nets.e_glo.init(keys[2], zeros(1, height, width, 3), zeros(len(SKIP_NAMES)))['params'],
      'u': nets.u.init(keys[3], zeros(1, 1, 1, nets.e_glo.d_glo))['params'],
      'r_glo': nets.r_glo.init(keys[4], zeros(1, *_unet_init_size(nets.r_glo, image_shape), 3))['params'],
  }
  # The patch form has the dense form's parameter tree (§3.3).
  e_loc = nets.e_loc.clone(dense=False).init(keys[0], zeros(1, p, p, 3))['params']
  return trainable, e_loc


def _unet_init_size(net: UNet, image_shape: tuple[int, int]) -> tuple[int, int]:
  side = 2 ** (net.depth - 1)
  return (side, side) if net.padding else tuple(image_shape)


def eloc_features(nets: GCADNets, e_loc_params: Any, stats: Mapping[str, Any], x: jnp.ndarray) -> jnp.ndarray:
  """f: E_loc's dense output, standardised (§3.4), float32, under stop-gradient (§7.2)."""
  features = nets.e_loc.apply({'params': e_loc_params}, x)
  return lax.stop_gradient(standardise(features.astype(jnp.float32), stats))


def _per_image(diff: jnp.ndarray, reduction: str) -> jnp.ndarray:
  """‖diff‖²_F per image divided by its depth d ('sum_per_image', Eq. 5), or the mean over H, W, C."""
  squared = jnp.square(diff.astype(jnp.float32))
  if reduction == 'sum_per_image':
    return squared.sum(axis=(1, 2, 3)) / diff.shape[-1]
  return squared.mean(axis=(1, 2, 3))  # 'mean_per_pixel'


def per_image_losses(nets: GCADNets, trainable: Mapping[str, Any], f: jnp.ndarray, x: jnp.ndarray,
                     skip_weights: jnp.ndarray, *, with_glo: bool, reduction: str = 'sum_per_image',
                     stop_grad_eglo_in_lglo: bool = False,
                     eglo_grad_scale_in_lglo=None) -> dict[str, jnp.ndarray]:
  """Per-image (B,) losses l_loc, l_kd, l_glo (Eq. 2–4, each /d) and total (Eq. 5) (docs/method.md §7.1–§7.2).

  `with_glo` (a Python bool) adds L_glo (stage 2, §7.3); when False R_glo is not evaluated, `trainable`
  need not hold 'r_glo', and l_glo is zeros. With 'mean_per_pixel' each term is the mean over H, W, C,
  i.e. the 'sum_per_image' value divided by H·W. The caller averages over the batch.
  L_glo's gradient into E_glo: all of it (the paper's joint loss), none (`stop_grad_eglo_in_lglo`), or
  `eglo_grad_scale_in_lglo` (a scalar in [0, 1], may be traced) times it; the loss values are the same.
  """
  if reduction not in REDUCTIONS:
    raise ValueError(f'config.train.loss_reduction: {reduction!r} is not one of {list(REDUCTIONS)}')
  r_loc = nets.r_loc.apply({'params': trainable['r_loc']}, x)
  z = nets.e_glo.apply({'params': trainable['e_glo']}, x, skip_weights)
  u_z = nets.u.apply({'params': trainable['u']}, z)
  l_loc = _per_image(f - r_loc, reduction)
  l_kd = _per_image(f - u_z, reduction)
  if with_glo:
    r_glo = nets.r_glo.apply({'params': trainable['r_glo']}, x)
    target = lax.stop_gradient(z) if stop_grad_eglo_in_lglo else _scale_gradient(z, eglo_grad_scale_in_lglo)
    l_glo = _per_image(target - r_glo, reduction)
    total = l_kd + l_glo + l_loc
  else:
    l_glo = jnp.zeros_like(l_loc)
    total = l_kd + l_loc
  return {'l_loc': l_loc, 'l_kd': l_kd, 'l_glo': l_glo, 'total': total}


def _scale_gradient(z: jnp.ndarray, scale) -> jnp.ndarray:
  """z in the forward pass; `scale` times its gradient in the backward pass (None: z itself)."""
  if scale is None:
    return z
  frozen = lax.stop_gradient(z)
  return frozen + scale * (z - frozen)


def anomaly_maps(nets: GCADNets, trainable: Mapping[str, Any], e_loc_params: Any, stats: Mapping[str, Any],
                 x: jnp.ndarray, *, squared: bool = False) -> tuple[jnp.ndarray, jnp.ndarray]:
  """(A_loc, A_glo), each (B, H, W) float32: per-pixel L2 norms of the residuals (docs/method.md §8 step 1).

  E_glo runs with all skip weights at 0 (§4.3). `squared` returns the squared norms (`score.squared`).
  """
  f = eloc_features(nets, e_loc_params, stats, x)
  r_loc = nets.r_loc.apply({'params': trainable['r_loc']}, x)
  z = nets.e_glo.apply({'params': trainable['e_glo']}, x, jnp.zeros((len(SKIP_NAMES),), jnp.float32))
  r_glo = nets.r_glo.apply({'params': trainable['r_glo']}, x)
  a_loc = jnp.square(f - r_loc.astype(jnp.float32)).sum(axis=-1)
  a_glo = jnp.square(z.astype(jnp.float32) - r_glo.astype(jnp.float32)).sum(axis=-1)
  if squared:
    return a_loc, a_glo
  return jnp.sqrt(a_loc), jnp.sqrt(a_glo)


def param_count(tree: Any) -> int:
  """Number of scalars in a parameter tree (arrays or `jax.ShapeDtypeStruct`s)."""
  return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(tree))
