"""`python -m psm_repro <command> [hydra overrides]`: see psm_repro/cli/."""

import sys

from psm_repro.cli import main

if __name__ == "__main__":
    sys.exit(main())
