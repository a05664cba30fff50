"""``python -m crossmodal`` (and ``torchrun -m crossmodal``) runs the command line."""

import sys

from .cli import main

sys.exit(main())
