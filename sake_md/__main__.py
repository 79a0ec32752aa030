"""``python -m sake_md ...``: the ``sake-md`` command without its console script."""

import sys

from .cli import main

sys.exit(main())
