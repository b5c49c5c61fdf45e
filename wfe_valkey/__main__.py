"""``python -m wfe_valkey``: the same as the ``wfe-valkey`` command."""

from .cli import main

if __name__ == "__main__":
    main()
