import sys

from .cli import main

if __name__ == "__main__":  # guarded: spawned training processes import this module
    sys.exit(main())
