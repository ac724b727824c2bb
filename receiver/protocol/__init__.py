"""Huawei callback formats to typed events: pure functions, no I/O."""

from .errors import ProtocolError
from .events import StatusReport, Uplink
from .status_report import Batch, RejectedItem, parse_status_report_batch, parse_status_report_form
from .uplink import parse_uplink_form

__all__ = [
    "Batch",
    "ProtocolError",
    "RejectedItem",
    "StatusReport",
    "Uplink",
    "parse_status_report_batch",
    "parse_status_report_form",
    "parse_uplink_form",
]
