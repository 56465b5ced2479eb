"""`python -m mammopath` = the `mammopath` command."""

import sys

from mammopath.cli import main

sys.exit(main())
