"""`python -m model_store ...`: see model_store.cli."""

from model_store.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
