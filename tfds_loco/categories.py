"""The category names: the one list of the MVTec LOCO AD categories and the one of the synthetic scenes.

The TFDS builder's configs (tfds_loco.mvtec_loco), the scene generator (tfds_loco.synthetic) and
gcad_jax's config checks (gcad_jax.configlib) all read these. Any other folder with a
defects_config.json is a category too (a user's own product); these are the names known in advance.
No imports: configs load this without the data stack.
"""

# The five categories of MVTec LOCO AD (Bergmann et al., IJCV 2022), in the data set's alphabetical order.
LOCO_CATEGORIES = ('breakfast_box', 'juice_bottle', 'pushpins', 'screw_bag', 'splicing_connectors')
# The procedural scenes of tfds_loco.synthetic: breakfast-box-like, pushpins-like, splicing-connectors-like.
SYNTHETIC_CATEGORIES = ('synthetic_tray', 'synthetic_grid', 'synthetic_connectors')
