"""``python -m dspool`` runs the command line."""

import sys

from dspool.cli import main

sys.exit(main())
