"""What validating an event costs next to the least work an emitted event needs.

    python benchmarks/event_validation.py [--rounds 7] [--events 20000]

``WebhookEvent.__post_init__`` checks field by field, each problem with its own message. Here
it runs on a valid event, and its cost is set against building the event and writing its body
and against that figure's spread over the rounds. A check that costs less than the spread
leaves nothing that a faster second validator could win beyond run-to-run noise. Each round
times every variant in turn, so a burst of load falls on all of them alike.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime

from kmsg_webhook import WebhookEvent, WebhookEventType

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def _per_call_ns(fn: Callable[[], object], n: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(n):
        fn()
    return (time.perf_counter_ns() - start) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--events", type=int, default=20_000)
    args = parser.parse_args()
    data = {"messageId": "msg_1", "to": "01012345678", "status": "delivered"}
    event = WebhookEvent(id="evt_1", type=WebhookEventType.MESSAGE_DELIVERED, timestamp=NOW)

    def emit_work() -> object:
        return WebhookEvent(
            id="evt_1", type=WebhookEventType.MESSAGE_DELIVERED, timestamp=NOW, data=data
        ).to_json()

    variants: dict[str, Callable[[], object]] = {
        "validation": event.__post_init__,
        "build + to_json": emit_work,
    }
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, fn in variants.items():
            samples[name].append(_per_call_ns(fn, args.events))

    for name, values in samples.items():
        print(
            f"{name:22} median {statistics.median(values):7.0f} ns"
            f"  (min {min(values):.0f}, max {max(values):.0f})"
        )
    check = statistics.median(samples["validation"])
    work = samples["build + to_json"]
    spread = max(work) - min(work)
    print(f"validation: {check / statistics.median(work):.1%} of build + to_json")
    print(f"build + to_json spread over {args.rounds} rounds: {spread:.0f} ns")
    print("validation costs", "more" if check > spread else "less", "than the run-to-run spread")


if __name__ == "__main__":
    main()
