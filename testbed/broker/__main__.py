"""`python -m testbed.broker`: the same as `testbed broker`."""

import sys

from testbed.broker.cli import main

sys.exit(main())
