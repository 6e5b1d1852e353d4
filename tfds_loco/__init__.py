"""TFDS support for MVTec LOCO AD and LOCO-layout data sets (real, synthetic, or a user's own product)."""
