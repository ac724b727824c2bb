"""The dashboards shipped with receiver, and the tools that draw a picture of them.

``grafana-receiver.json`` is the Grafana dashboard; ``render`` draws it from its own panel
queries (``python -m dashboards.render``); ``demo`` fills a fresh database with a simulated day
of traffic through a real ``receiver serve`` and renders it (``python -m dashboards.demo``).
"""
