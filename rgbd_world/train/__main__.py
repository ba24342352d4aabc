"""``python -m rgbd_world.train`` is ``python train.py`` (for installs without the repo root)."""
import sys

from .cli import main

sys.exit(main())
