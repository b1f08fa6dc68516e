"""``python -m visionpeft`` (also what ``torchrun ... -m visionpeft train RECIPE`` runs)."""

import sys

from .cli import main

sys.exit(main())
