"""Procedural scenes in the exact MVTec LOCO AD on-disk layout: the embedded default data set.

`generate()` writes `<out>/<category>/` as docs/data_format.md §2 lays it out (RGB PNGs, three-digit ids), one
single-channel ground-truth PNG per defect channel (§5) and `defects_config.json` (§6), and, outside the
category folder, `<out>/<category>.manifest.json`, which lists every image and channel for tests. `<out>`
is a TFDS `manual_dir`. The scenes obey real logical constraints (kinds, counts, colours, placement), so
logical anomalies need global context, while good images vary in pose, position, colour and lighting.

  python -m tfds_loco.synthetic --out data/synthetic --seed 0 --category all

Modules: `draw` (drawing primitives and rendering), `family` (what a scene family is, shared defects),
`tray`, `grid`, `connectors` (one per scene family), `scenes` (families by category, one image of a
recipe, twin pairs) and `writer` (the category folder on disk, and the command line).
"""

from tfds_loco.synthetic.scenes import CATEGORIES
from tfds_loco.synthetic.scenes import DEFAULT_SIZE
from tfds_loco.synthetic.scenes import defects_config
from tfds_loco.synthetic.scenes import default_counts
from tfds_loco.synthetic.scenes import FAMILIES
from tfds_loco.synthetic.scenes import MIN_SIZE
from tfds_loco.synthetic.scenes import twin_pair
from tfds_loco.synthetic.writer import generate
from tfds_loco.synthetic.writer import main

_FAMILIES = FAMILIES  # the name used before the module became a package
