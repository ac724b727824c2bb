"""Signed pushes, the pure part: requests signed by Huawei's own signer verify; anything altered does not."""

from __future__ import annotations

import calendar
import time
from urllib.parse import quote, urlsplit

import pytest
from huawei_signer import PlatformSigner, sign
from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.sdk_request import SdkRequest
from hypothesis import given, settings
from hypothesis import strategies as st

from receiver.protocol import signature
from receiver.protocol.signature import SignatureError

AK, SK = "exampleAk", "exampleSk*1231d881wd"  # the pair of Huawei's verification sample
AK2, SK2 = "nextAk", "nextSk-0f9e8d7c"
KEYS = {AK: SK, AK2: SK2}
HOST = "205.145.111.168:9330"
FORM = "application/x-www-form-urlencoded"
BODY = (
    b"sequence=1&total=1&orgCode=000&updateTime=2018-04-13T06%3A31%3A46Z&source=2"
    b"&smsMsgId=b9d9b4fe-ad0e-4a2a-a2c7-445505b674ac_6&status=DELIVRD"
)
DATE = "20241212T070653Z"
NOW = float(calendar.timegm(time.strptime(DATE, "%Y%m%dT%H%M%SZ")))


def wire(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    """Header pairs as an ASGI server hands them over: lower-case names, the bytes as sent."""
    return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]


def verify(
    headers: list[tuple[bytes, bytes]] | dict[str, str],
    *,
    body: bytes = BODY,
    path: bytes = b"/report",
    query: bytes = b"",
    method: str = "POST",
    now: float = NOW,
    max_skew: float = 900,
    keys: dict[str, str] | None = None,
) -> str:
    return signature.verify(
        KEYS if keys is None else keys,
        method=method,
        raw_path=path,
        query_string=query,
        headers=wire(headers) if isinstance(headers, dict) else headers,
        body=body,
        now=now,
        max_skew=max_skew,
    )


def refusal(headers: list[tuple[bytes, bytes]] | dict[str, str], **kwargs: object) -> SignatureError:
    with pytest.raises(SignatureError) as caught:
        verify(headers, **kwargs)  # type: ignore[arg-type]
    return caught.value


def signed(ak: str = AK, sk: str = SK, **kwargs: object) -> dict[str, str]:
    options: dict[str, object] = {"host": HOST, "path": "/report", "body": BODY, "content_type": FORM, "date": DATE}
    options.update(kwargs)
    return sign(ak, sk, **options)  # type: ignore[arg-type]


# --- the Authorization header ----------------------------------------------------------------

HEX = "765a365f3851fd1c96011a82b893266fb7b3e79b3002526c43199c97e61bb88b"
EXAMPLE_SIGNED = ("connection", "content-length", "content-type", "host", "x-sdk-date")

PARSED = [
    ("the reference's example, bare commas",
     f"SDK-HMAC-SHA256 Access=exampleAk,SignedHeaders=connection;content-length;content-type;host;x-sdk-date,Signature={HEX}",
     ("exampleAk", EXAMPLE_SIGNED, HEX)),
    ("the SDK's builder, comma and space",
     f"SDK-HMAC-SHA256 Access=exampleAk, SignedHeaders=connection;content-length;content-type;host;x-sdk-date, Signature={HEX}",
     ("exampleAk", EXAMPLE_SIGNED, HEX)),
    ("mixed separators", f"SDK-HMAC-SHA256 Access=a-1,SignedHeaders=host;x-sdk-date, Signature={HEX}",
     ("a-1", ("host", "x-sdk-date"), HEX)),
    ("several blanks after the algorithm", f"SDK-HMAC-SHA256   Access=ak,SignedHeaders=host,Signature={HEX}",
     ("ak", ("host",), HEX)),
    ("surrounding blanks", f"  SDK-HMAC-SHA256 Access=ak,SignedHeaders=host,Signature={HEX}  ",
     ("ak", ("host",), HEX)),
]  # fmt: skip


@pytest.mark.parametrize(("value", "expected"), [case[1:] for case in PARSED], ids=[case[0] for case in PARSED])
def test_authorization_formats(value: str, expected: tuple[str, tuple[str, ...], str]) -> None:
    auth = signature.parse_authorization(value)
    assert (auth.access_key, auth.signed_headers, auth.signature) == expected


MALFORMED = [
    ("another algorithm", f"SDK-HMAC-SHA1 Access=ak,SignedHeaders=host,Signature={HEX}"),
    ("bearer", "Bearer abc"),
    ("empty", ""),
    ("no signature", "SDK-HMAC-SHA256 Access=ak,SignedHeaders=host"),
    ("two blanks after a comma", f"SDK-HMAC-SHA256 Access=ak,  SignedHeaders=host,Signature={HEX}"),
    ("fields out of order", f"SDK-HMAC-SHA256 SignedHeaders=host,Access=ak,Signature={HEX}"),
    ("trailing field", f"SDK-HMAC-SHA256 Access=ak,SignedHeaders=host,Signature={HEX},Extra=1"),
    ("signature not a word", "SDK-HMAC-SHA256 Access=ak,SignedHeaders=host,Signature=ab-cd"),
    ("upper-case header name", f"SDK-HMAC-SHA256 Access=ak,SignedHeaders=Host,Signature={HEX}"),
    ("empty header name", f"SDK-HMAC-SHA256 Access=ak,SignedHeaders=host;;x-sdk-date,Signature={HEX}"),
    ("header named twice", f"SDK-HMAC-SHA256 Access=ak,SignedHeaders=host;host,Signature={HEX}"),
]


@pytest.mark.parametrize("value", [case[1] for case in MALFORMED], ids=[case[0] for case in MALFORMED])
def test_malformed_authorization(value: str) -> None:
    with pytest.raises(SignatureError) as caught:
        signature.parse_authorization(value)
    assert caught.value.reason == "malformed_authorization"


# --- Huawei's signer, then us --------------------------------------------------------------------


def test_the_reference_example_request_signed_by_huaweis_signer_verifies() -> None:
    headers = signed()
    auth = signature.parse_authorization(headers["Authorization"])
    assert auth.signed_headers == EXAMPLE_SIGNED  # the same list as the reference's example
    assert verify(headers) == AK


def test_the_reference_header_format_without_blanks_verifies() -> None:
    headers = signed()
    auth = signature.parse_authorization(headers["Authorization"])
    headers["Authorization"] = (
        f"SDK-HMAC-SHA256 Access={auth.access_key},SignedHeaders={';'.join(auth.signed_headers)},"
        f"Signature={auth.signature}"
    )
    assert verify(headers) == AK


def test_both_keys_of_a_rotation_verify() -> None:
    assert verify(signed(AK, SK)) == AK
    assert verify(signed(AK2, SK2)) == AK2


def test_a_json_batch_signed_by_the_unmodified_sdk_signer_verifies() -> None:
    body = b'{"statusReportList":[{"smsMsgId":"m_1","status":"DELIVRD"}]}'
    headers = signed(body=body, content_type="application/json;charset=UTF-8", sdk_shortcut=True)
    assert "X-Sdk-Content-Sha256" not in headers  # JSON: the SDK hashes the body
    assert verify(headers, body=body) == AK


def test_an_empty_body_verifies() -> None:
    assert verify(signed(body=b""), body=b"") == AK


def test_query_parameters_are_signed_sorted() -> None:
    query = [("z", "last"), ("a", "first value"), ("m", ""), ("a", "again/+&=")]
    headers = signed(query=query)
    raw = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in query).encode()
    assert verify(headers, query=raw) == AK
    assert refusal(headers, query=b"z=last").reason == "signature_mismatch"


def test_header_values_are_trimmed_and_compared_as_received() -> None:
    headers = wire(signed(extra={"X-Tag": "  spaced  "}))
    assert verify(headers) == AK
    assert verify([(k, b"   " + v + b"\t") if k == b"host" else (k, v) for k, v in headers]) == AK


def test_a_declared_body_hash_verifies_when_it_is_the_bodys() -> None:
    import hashlib

    digest = hashlib.sha256(BODY).hexdigest()
    headers = signed(extra={"X-Sdk-Content-Sha256": digest})
    assert "x-sdk-content-sha256" in headers["Authorization"]
    assert verify(headers) == AK


@settings(max_examples=150, deadline=None)
@given(
    segments=st.lists(
        st.text(st.characters(codec="utf-8", exclude_characters="/%?#", exclude_categories=("Cs", "Cc")), max_size=8),
        min_size=1,
        max_size=4,
    ),
    query=st.lists(
        st.tuples(
            st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=6),
            st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=6),
        ),
        max_size=4,
    ),
    body=st.binary(max_size=200),
    method=st.sampled_from(["POST", "PUT", "GET"]),
)
def test_anything_huaweis_signer_signs_verifies(
    segments: list[str], query: list[tuple[str, str]], body: bytes, method: str
) -> None:
    path = "/" + "/".join(segments)
    headers = signed(path=path, query=query, body=body, method=method, content_type="application/json")
    wire_path = quote(path, safe="/").encode()
    wire_query = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in query).encode()
    assert verify(headers, path=wire_path, query=wire_query, body=body, method=method) == AK


@pytest.mark.parametrize("path", ["/report", "/", "/callbacks/tok_EN-1/status-report", "/a b/ü/~x", "/a%20b/c/"])
def test_canonical_uri_is_the_sdks(path: str) -> None:
    sdk = PlatformSigner(BasicCredentials(AK, SK))._process_canonical_uri(SdkRequest(resource_path=path))
    raw = path if "%" in path else quote(path, safe="/~")
    assert signature.canonical_uri(raw.encode()) == sdk


# --- what must be refused --------------------------------------------------------------------------


def test_wrong_secret_key() -> None:
    error = refusal(signed(AK, "not-the-secret"))
    assert error.reason == "signature_mismatch"


def test_expected_signature_never_in_the_detail() -> None:
    headers = signed(AK, "not-the-secret")
    right = signed(AK, SK)
    error = refusal(headers)
    assert signature.parse_authorization(right["Authorization"]).signature not in error.detail
    assert SK not in error.detail


def test_tampered_body() -> None:
    assert refusal(signed(), body=BODY.replace(b"DELIVRD", b"UNDELIV")).reason == "signature_mismatch"


def test_tampered_path_method_and_host() -> None:
    headers = signed()
    assert refusal(headers, path=b"/other").reason == "signature_mismatch"
    assert refusal(headers, method="PUT").reason == "signature_mismatch"
    moved = {**headers, "Host": "attacker.example:443"}
    assert refusal(moved).reason == "signature_mismatch"


def test_a_signature_of_one_key_under_the_other_access_key() -> None:
    headers = signed(AK, SK)
    headers["Authorization"] = headers["Authorization"].replace(f"Access={AK}", f"Access={AK2}")
    assert refusal(headers).reason == "signature_mismatch"


def test_unknown_access_key() -> None:
    assert refusal(signed("someoneElse", SK)).reason == "unknown_access_key"
    assert refusal(signed(), keys={}).reason == "unknown_access_key"


@pytest.mark.parametrize("offset", [901, -901, 86400, -86400 * 365])
def test_stale_or_future_date(offset: int) -> None:
    assert refusal(signed(), now=NOW + offset).reason == "stale_date"


@pytest.mark.parametrize("offset", [900, -900, 0])
def test_date_within_the_skew(offset: int) -> None:
    assert verify(signed(), now=NOW + offset) == AK


def test_skew_is_configurable() -> None:
    assert refusal(signed(), now=NOW + 61, max_skew=60).reason == "stale_date"


@pytest.mark.parametrize("date", ["2024-12-12T07:06:53Z", "20241212T070653", "20241312T070653Z", "x"])
def test_malformed_date(date: str) -> None:
    headers = {**signed(), "X-Sdk-Date": date}
    assert refusal(headers).reason == "malformed_date"


@pytest.mark.parametrize("header", ["Authorization", "X-Sdk-Date", "Connection", "Content-Length", "Host"])
def test_missing_header(header: str) -> None:
    headers = signed()
    del headers[header]
    assert refusal(headers).reason == "missing_header"


def test_repeated_signed_header() -> None:
    headers = wire(signed()) + [(b"host", b"attacker.example")]
    assert refusal(headers).reason == "repeated_header"
    twice = wire(signed()) + [(b"authorization", b"SDK-HMAC-SHA256 Access=x,SignedHeaders=host,Signature=ab")]
    assert refusal(twice).reason == "repeated_header"


def test_the_sdks_unsigned_payload_is_refused() -> None:
    headers = signed(sdk_shortcut=True)  # a form body: the SDK signs UNSIGNED-PAYLOAD, not the body
    assert headers["X-Sdk-Content-Sha256"] == "UNSIGNED-PAYLOAD"
    assert refusal(headers).reason == "unsigned_payload"


def test_a_declared_body_hash_of_another_body_is_refused() -> None:
    import hashlib

    headers = signed(extra={"X-Sdk-Content-Sha256": hashlib.sha256(b"other").hexdigest()})
    assert refusal(headers).reason == "unsigned_payload"


def test_host_is_compared_with_its_port() -> None:
    headers = signed(host=urlsplit(f"https://{HOST}").hostname or "")
    assert verify(headers) == AK
    assert refusal({**headers, "Host": HOST}).reason == "signature_mismatch"
