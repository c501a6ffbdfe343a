"""``python -m qadv.cli ...``: the ``qadv`` command line."""

import sys

from qadv.cli import main

sys.exit(main())
