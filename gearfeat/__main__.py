"""``python -m gearfeat``."""
from .cli import console

console()
