"""``python -m optdsl``: the command line."""

import sys

from optdsl.cli import main

sys.exit(main())
