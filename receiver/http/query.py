"""The downstream services' side: /v1 queries about sent messages, reports and replies."""

from __future__ import annotations

from starlette.routing import BaseRoute

routes: list[BaseRoute] = []
