"""``python -m qadv.cli ...``: the ``qadv`` command line."""

import sys

from qadv.apps.cli import main

sys.exit(main())
