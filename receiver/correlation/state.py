"""A message's delivery state, derived from the set of its reports: order-free. ``message_states``
(:mod:`receiver.correlation.store`) derives it in SQL; tests/delivery_rule.py is the same rule in
Python, which the tests hold the SQL to.

Rules (Huawei documents only "DELIVRD means received, anything else does not"):

- a part is *delivered* once any report for it says ``DELIVRD`` (any case), *failed* when it has
  reports and none says ``DELIVRD``, *pending* without reports;
- a message is *delivered* when all of its ``total`` parts are, *failed* when any part failed or
  the send API refused the recipient at once (a per-recipient status other than ``000000``),
  else *pending*;
- a registered send still *pending* once its report window (``RECEIVER_REPORT_WINDOW``, 72 h:
  the platform reports within 72 hours of the send, or never) has passed, at ``now`` or later
  than ``createTime + window``, is *unreported*. A message known from reports alone has no
  ``createTime`` and stays *pending*.

The result depends only on the set of reports, the send and the clock: every choice below (the
latest status, the delivery time) breaks ties by value, never by arrival order.
"""

from __future__ import annotations

from datetime import timedelta

REPORT_WINDOW = timedelta(hours=72)
STATES = ("pending", "delivered", "failed", "unreported")
