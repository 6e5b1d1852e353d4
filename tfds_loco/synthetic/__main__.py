"""`python -m tfds_loco.synthetic ...`: the writer's command line (tfds_loco.synthetic.writer.main)."""

import sys

from tfds_loco.synthetic import writer

if __name__ == '__main__':
  sys.exit(writer.main())
