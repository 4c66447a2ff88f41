"""`python -m backend.cli`: the same as the `maskloop` console script."""

from backend.cli import app

app()
