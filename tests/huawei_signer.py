"""Signing requests the way the platform does, with Huawei's own signer (``huaweicloudsdkcore``).

The platform signs pushes with the API Gateway's Java signer, which always hashes the body (the
reference's example signs ``connection;content-length;content-type;host;x-sdk-date`` and no
``x-sdk-content-sha256``). The Python SDK's signer is the same algorithm, except that for a body
that is not JSON it signs ``X-Sdk-Content-Sha256: UNSIGNED-PAYLOAD`` instead of the body's hash.
:class:`PlatformSigner` turns that one shortcut off; ``sign(..., sdk_shortcut=True)`` keeps it.
"""

from __future__ import annotations

import time

from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.sdk_request import SdkRequest
from huaweicloudsdkcore.signer.signer import Signer


class PlatformSigner(Signer):  # type: ignore[misc]  # Huawei's SDK has no types: Signer is Any
    """Huawei's ``Signer`` as the push side uses it: the body is always hashed."""

    @classmethod
    def _process_content_header(cls, request: SdkRequest) -> None:
        pass


def sdk_date(at: float | None = None) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if at is None else at))


def sign(
    ak: str,
    sk: str,
    *,
    host: str,
    path: str,
    body: bytes,
    content_type: str,
    method: str = "POST",
    query: list[tuple[str, str]] | None = None,
    date: str | None = None,
    connection: str | None = "close",
    extra: dict[str, str] | None = None,
    sdk_shortcut: bool = False,
) -> dict[str, str]:
    """The headers of a signed request, ``Authorization`` included, as the signer produced them.

    Signed like the reference's example: ``Connection``, ``Content-Length``, ``Content-Type``,
    ``Host`` and ``X-Sdk-Date`` (plus ``extra``, which are signed too)."""
    headers = {
        "Content-Type": content_type,
        "Host": host,
        "Content-Length": str(len(body)),
        "X-Sdk-Date": date or sdk_date(),
        **({"Connection": connection} if connection else {}),
        **(extra or {}),
    }
    request = SdkRequest(
        method=method,
        schema="https",
        host=host,
        resource_path=path,
        query_params=list(query or []),
        header_params=headers,
        body=body,
    )
    signer = (Signer if sdk_shortcut else PlatformSigner)(BasicCredentials(ak, sk))
    signed = signer.sign(request)
    return dict(signed.header_params)
