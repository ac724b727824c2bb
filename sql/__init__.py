"""The SQL migrations, installed as the package ``receiver.migrations`` (see pyproject.toml) and
read by ``receiver.db.migrate`` through ``importlib.resources``."""
