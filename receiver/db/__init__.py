"""PostgreSQL: the embedded default, migrations, and the URL in use."""
