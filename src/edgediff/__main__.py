"""`python -m edgediff` is the `edgediff` command."""

import sys

from edgediff.cli.main import main

sys.exit(main())
