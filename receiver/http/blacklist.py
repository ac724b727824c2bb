"""The downstream services' side: /v1/blacklist, to check numbers before sending."""

from __future__ import annotations

from starlette.routing import BaseRoute

routes: list[BaseRoute] = []
