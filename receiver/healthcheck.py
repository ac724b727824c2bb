"""``python -m receiver.healthcheck``: exit 0 when the local ``receiver serve`` answers ``/healthz``.

For container health checks (the Dockerfile's ``HEALTHCHECK``): standard library only, plain
HTTP first, then HTTPS without certificate checks (the service may serve TLS itself, with any
certificate), on ``RECEIVER_PORT`` (default 8080) of 127.0.0.1.
"""

from __future__ import annotations

import http.client
import os
import ssl
import sys
import urllib.request


def healthy(port: int, timeout: float = 2.0) -> bool:
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE
    for url, context in (
        (f"http://127.0.0.1:{port}/healthz", None),
        (f"https://127.0.0.1:{port}/healthz", insecure),
    ):
        try:
            with urllib.request.urlopen(url, timeout=timeout, context=context) as response:
                if response.status == 200:
                    return True
        except (OSError, ValueError, http.client.HTTPException):  # e.g. plain HTTP to a TLS port
            continue
    return False


def main() -> int:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else int(os.environ.get("RECEIVER_PORT", "8080"))
    return 0 if healthy(port) else 1


if __name__ == "__main__":
    sys.exit(main())
