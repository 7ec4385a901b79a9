"""`python -m broker.cli`: the same as the `headwater` script."""

import sys

from broker.cli import main

sys.exit(main())
