"""`python -m cifarbench.report DIR [DIR ...]`; the code is in cifarbench.cli.report."""

import sys

from cifarbench.cli.report import main

if __name__ == "__main__":
    sys.exit(main())
