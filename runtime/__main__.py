"""`python -m autr.runtime ...` runs `autr stream ...` (the same command, before or without the main CLI)."""
from autr.runtime.cli import main

if __name__ == "__main__":
    main()
