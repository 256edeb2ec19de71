"""``python -m embeval`` runs the command line."""

from embeval.cli import main

if __name__ == "__main__":
    main()
