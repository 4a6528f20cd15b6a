"""``python -m newarrivals.service.cli``."""

import sys

from newarrivals.service.cli import main

sys.exit(main())
