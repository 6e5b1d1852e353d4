"""The category names: MVTec LOCO AD, MVTec AD (with the paper's Table 4 logical split), the synthetic scenes.

The TFDS builder's configs (tfds_loco.mvtec_loco), the scene generator (tfds_loco.synthetic) and
gcad_jax's config checks (gcad_jax.configlib) all read these. Any other folder with a
defects_config.json is a category too (a user's own product); these are the names known in advance.
No imports: configs load this without the data stack.
"""

# The five categories of MVTec LOCO AD (Bergmann et al., IJCV 2022), in the data set's alphabetical order.
LOCO_CATEGORIES = ('breakfast_box', 'juice_bottle', 'pushpins', 'screw_bag', 'splicing_connectors')
# The procedural scenes of tfds_loco.synthetic: breakfast-box-like, pushpins-like, splicing-connectors-like.
SYNTHETIC_CATEGORIES = ('synthetic_tray', 'synthetic_grid', 'synthetic_connectors')
# The fifteen categories of MVTec AD (Bergmann et al., CVPR 2019), in the data set's alphabetical order.
MVTEC_AD_CATEGORIES = ('bottle', 'cable', 'capsule', 'carpet', 'grid', 'hazelnut', 'leather', 'metal_nut', 'pill',
                       'screw', 'tile', 'toothbrush', 'transistor', 'wood', 'zipper')
# The paper's Table 4 (docs/method.md §10.2): the logical anomalies of MVTec AD, 37 of its 1,258 anomalous test
# images. An entry is a defect folder (all its images) or 'defect/name' (one image); every other defect is
# structural. Images 5, 7 and 9 of cable/combined are read as files 005, 007, 009.
MVTEC_AD_LOGICAL = {
    'cable': ('cable_swap', 'combined/005', 'combined/007', 'combined/009'),
    'capsule': ('faulty_imprint/004', 'faulty_imprint/005'),
    'transistor': ('cut_lead', 'misplaced'),
}
