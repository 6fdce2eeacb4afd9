"""``python -m recbench.report``; see ``recbench.report.cli``."""

import sys

from recbench.report.cli import main

if __name__ == "__main__":
    sys.exit(main())
