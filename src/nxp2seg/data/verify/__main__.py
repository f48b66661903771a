"""``python -m nxp2seg.data.verify COHORT``."""

import sys

from nxp2seg.data.verify.cli import main

sys.exit(main())
