"""`python -m testbed.lab up|down|status|smoke|render`."""

import sys

from testbed.lab.cli import main

sys.exit(main())
