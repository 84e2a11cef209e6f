"""`python -m image_enhancer` is the same as the `image-enhancer` command."""

import sys

from image_enhancer.cli import main

sys.exit(main())
