"""``python -m coophash``: the command-line tool without the console script."""
from coophash.cli import main

if __name__ == "__main__":
    main()
