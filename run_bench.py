#!/usr/bin/env python
"""attnbench command line: ``python run_bench.py list`` (the same as the ``attnbench`` script).

Run ``python run_bench.py --help`` for the commands.
"""

import sys

from attnbench.cli import main

if __name__ == "__main__":
    sys.exit(main())
