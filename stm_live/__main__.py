"""``python -m stm_live`` is ``stm-live``."""

import sys

from .cli import main

sys.exit(main())
