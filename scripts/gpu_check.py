"""GPU check of the study: python scripts/gpu_check.py [--trials N] [--epochs E]"""

import sys

from study.gpu_check import main

if __name__ == "__main__":
    sys.exit(main())
