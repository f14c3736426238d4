"""``python -m lens_train``: the same as the ``lens-train`` command."""

from .cli import main

if __name__ == "__main__":
    main()
