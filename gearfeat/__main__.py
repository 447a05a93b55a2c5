"""``python -m gearfeat``."""
import sys

from .cli import main

sys.exit(main())
