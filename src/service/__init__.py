"""The recognition HTTP service (FastAPI) and its cashier page. Run: `python -m src.service --help`."""
