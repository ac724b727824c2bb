"""``GET /metrics``: the Prometheus exposition of every worker (see ``receiver.metrics``)."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .. import metrics


async def metrics_endpoint(request: Request) -> Response:
    metrics.TALLY.flush()  # this worker's callback counts of the last second
    body, content_type = await asyncio.to_thread(metrics.render)  # reads the workers' files: off the loop
    return Response(body, media_type=content_type)


routes = [Route("/metrics", metrics_endpoint, methods=["GET"])]
