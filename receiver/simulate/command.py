"""``receiver simulate``: push a realistic stream of the platform's callbacks to a running receiver.

    receiver simulate --token TOKEN [--url http://127.0.0.1:8080] [--api-key KEY]
                      [--messages 1000] [--rate 200] [--concurrency 32]
                      [--long 0.1] [--failures 0.05] [--duplicates 0.05] [--reorder]
                      [--replies 0.05] [--optouts 0.02] [--batch] [--channel csms100000001]
                      [--push-key AK:SK] [--insecure] [--seed N] [--wait 30] [--json] [--no-progress]

With ``--api-key`` the sends are registered first (``POST /v1/sent``, as a sender would with
the send API's answers), and afterwards the command waits (up to ``--wait`` seconds) until the
receiver shows the expected delivery states and blacklist, and says whether it does. Exit code
0 when every push was acknowledged (and, with a key, the outcome is the expected one).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from typing import Any

from . import push, scenario


def add_parser(commands: Any) -> None:
    p = commands.add_parser(
        "simulate",
        help="push simulated status reports and replies to a running receiver (no Huawei account needed)",
        description=__doc__.split("\n\n", 1)[0] if __doc__ else None,
    )
    p.add_argument("--token", required=True, help="the application's token (receiver app create NAME)")
    p.add_argument("--url", default="http://127.0.0.1:8080", help="the receiver's base URL")
    p.add_argument("--api-key", help="an API key: register the sends first, check the outcome after")
    p.add_argument("--messages", type=int, default=1000, help="messages sent (default 1000)")
    p.add_argument("--rate", type=float, default=200.0, help="pushes per second; 0: as fast as possible")
    p.add_argument("--concurrency", type=int, default=32, help="pushes in flight at most (default 32)")
    p.add_argument("--long", type=float, default=0.1, help="share of long messages, 2 to 4 parts (0.1)")
    p.add_argument("--failures", type=float, default=0.05, help="share of messages not delivered (0.05)")
    p.add_argument("--duplicates", type=float, default=0.05, help="share of pushes sent twice (0.05)")
    p.add_argument("--reorder", action="store_true", help="long-SMS parts and events out of order")
    p.add_argument("--replies", type=float, default=0.05, help="share of messages answered with text (0.05)")
    p.add_argument("--optouts", type=float, default=0.02, help="share answered T, 退订, Ｔ, ... (0.02)")
    p.add_argument("--batch", action="store_true", help="status reports as JSON batches of 1 to 50")
    p.add_argument("--channel", default="csms100000001", help="the channel number sends come from")
    p.add_argument("--push-key", help="AK:SK: sign every push (SDK-HMAC-SHA256) like the platform")
    p.add_argument("--insecure", action="store_true", help="https: accept a self-signed certificate")
    p.add_argument(
        "--seed",
        type=int,
        help="the same seed: the same messages, numbers and events (times follow the clock)",
    )
    p.add_argument("--wait", type=float, default=30.0, help="with --api-key: seconds to wait for the outcome")
    p.add_argument("--json", action="store_true", help="print one JSON object on standard output")
    p.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bar on stderr"
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    try:
        options = scenario.Options(
            messages=args.messages, long=args.long, failures=args.failures, duplicates=args.duplicates,
            reorder=args.reorder, replies=args.replies, optouts=args.optouts, batch=args.batch,
            channel=args.channel, seed=args.seed,
        )  # fmt: skip
        key = _push_key(args.push_key)
        target = push.Target(args.url, args.token, insecure=args.insecure, push_key=key)
    except ValueError as error:
        print(f"receiver simulate: {error}", file=sys.stderr)
        return 2
    plan = scenario.build(options)
    expected = plan.expected
    say = (lambda text: print(text, file=sys.stderr)) if args.json else print
    duplicates = sum(1 for p in plan.pushes if p.duplicate)
    say(
        f"{len(plan.sends)} messages ({expected.reports} parts, {len(expected.failed)} not delivered), "
        f"{expected.replies} replies ({len(expected.optouts)} unsubscribing): "
        f"{len(plan.pushes)} pushes ({duplicates} duplicates) to {args.url}"
    )
    api = push.Api(args.url, args.api_key, args.insecure) if args.api_key else None
    report: dict[str, Any] = {
        "messages": len(plan.sends),
        "expected": _expected(plan, registered=api is not None),
    }
    if api is not None:
        try:
            report["registered"] = api.register(plan)
        except (push.ApiError, OSError) as error:
            print(f"receiver simulate: registering the sends failed: {error}", file=sys.stderr)
            return 1
        say(f"registered {report['registered']} sends through /v1/sent")

    bar = push.ProgressBar(len(plan.pushes), enabled=args.progress)
    result = asyncio.run(
        push.push_all(target, plan.pushes, rate=args.rate, concurrency=args.concurrency, progress=bar)
    )
    bar.close()
    report["push"] = result.summary()
    ok = result.acknowledged == len(plan.pushes)
    codes = ", ".join(f"{code or 'no answer'}: {n}" for code, n in sorted(result.codes.items()))
    say(
        f"pushed {result.pushes} in {result.elapsed:.1f} s ({result.rate:.0f}/s; {codes}); "
        f"p50 {report['push']['latency_p50_ms']} ms, p99 {report['push']['latency_p99_ms']} ms"
    )
    if not ok:
        say("not every push was acknowledged: the outcome cannot match the expected one")
    if api is not None and ok:
        report["outcome"], matched = _check(api, plan, args.wait)
        outcome = report["outcome"]
        say(
            f"receiver: {outcome['delivered']} delivered, {outcome['failed']} failed, {outcome['pending']} pending, "
            f"{outcome['blacklisted']} blacklisted ({'as expected' if matched else 'NOT as expected'})"
        )
        ok = matched
    elif api is None:
        say("(with --api-key the sends are registered first and the outcome is checked)")
    report["ok"] = ok
    if args.json:
        print(json.dumps(report, ensure_ascii=False))
    return 0 if ok else 1


def _push_key(value: str | None) -> tuple[str, str] | None:
    if value is None:
        return None
    access, sep, secret = value.partition(":")
    if not sep or not access or not secret:
        raise ValueError("--push-key must be AK:SK")
    return access, secret


def _expected(plan: scenario.Scenario, registered: bool) -> dict[str, int]:
    e = plan.expected
    return {
        "reports": e.reports,
        "replies": e.replies,
        "delivered": len(e.delivered),
        "failed": len(e.failed),
        "optouts": len(e.optouts),
        "blacklisted": len(e.blacklisted(registered)),
    }


def _check(api: push.Api, plan: scenario.Scenario, wait: float) -> tuple[dict[str, int], bool]:
    """Poll until the receiver's view is the expected one, or ``wait`` seconds have passed."""
    expected = plan.expected
    want = Counter({"delivered": len(expected.delivered), "failed": len(expected.failed)})
    numbers = [send.to for send in plan.sends]
    want_blacklisted = expected.blacklisted(registered=True)
    deadline = time.monotonic() + wait
    while True:
        states = api.states(plan)
        blacklisted = api.blacklisted(numbers)
        outcome = {
            "delivered": states.get("delivered", 0),
            "failed": states.get("failed", 0),
            "pending": states.get("pending", 0),
            "blacklisted": len(blacklisted),
        }
        matched = +states == +want and blacklisted == want_blacklisted
        if matched or time.monotonic() >= deadline:
            return outcome, matched
        time.sleep(0.5)
