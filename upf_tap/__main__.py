import sys

from upf_tap.cli import main

sys.exit(main())
