"""`python -m deploy.cli …`, the same as `tasleem …`."""

from deploy.cli import app

app()
