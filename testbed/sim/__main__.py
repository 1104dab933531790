"""`python -m testbed.sim up|down|status …` (the same as `testbed sim …`)."""

import sys

from testbed.sim.cli import main

sys.exit(main())
