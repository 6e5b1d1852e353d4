"""The GCAD networks (docs/method.md §2–§6) and their composition (§7–§8): one file per network of the paper."""

from gcad_jax.models.gcad import (GCADNets, anomaly_maps, build_nets, compute_dtype, eloc_features, init_params,
                                  param_count, per_image_losses)
from gcad_jax.models.global_net import GlobalEncoderDecoder, SKIP_NAMES, Upsampler, skip_weights
from gcad_jax.models.teacher import (PatchTeacher, dense_padding, feature_moments, receptive_field, standardise,
                                     stats_from_moments)
from gcad_jax.models.unet import UNet
