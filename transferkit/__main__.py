"""Run the command line with ``python -m transferkit``."""

import sys

from transferkit.cli import main

if __name__ == "__main__":
    sys.exit(main())
