"""``python -m segmenter INPUT... -o OUTDIR``: see segmenter.cli."""

import sys

from .cli import main

sys.exit(main())
