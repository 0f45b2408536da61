"""``python -m harness``: the ``harness`` command where its script is not installed."""

from harness.cli import main

if __name__ == "__main__":
    main()
