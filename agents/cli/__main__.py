"""``python -m qflgym.agents.cli``: the ``qflgym`` command line."""

import sys

from qflgym.agents.cli.main import main

sys.exit(main())
