"""Run the fault scenarios against real sweeps and print a table: python scripts/faults.py"""

import sys

from study.faults import main

if __name__ == "__main__":
    sys.exit(main())
