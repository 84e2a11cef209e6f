"""`python -m image_enhancer_training CONFIG [--no-resume]`."""

import sys

from .run import train_main

sys.exit(train_main())
