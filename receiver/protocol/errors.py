"""The one exception protocol parsing raises."""

from __future__ import annotations


class ProtocolError(ValueError):
    """The request does not follow the Huawei protocol.

    ``code`` is a short machine-readable reason (``missing_field``, ``field_too_long``, ...);
    ``detail`` says where, without echoing values that may hold personal data.
    """

    def __init__(self, code: str, detail: object = None) -> None:
        super().__init__(code)
        self.code = code
        self.detail = detail

    def __repr__(self) -> str:
        return f"ProtocolError({self.code!r}, {self.detail!r})"
