"""The public HTTP interface's bodies, declared once (models.py)."""
