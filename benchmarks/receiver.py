"""A fast benchmark receiver: answers 200, counts, and records emit→receipt latency.

Each request body is a webhook event whose ``data.sent_at`` (epoch seconds, float) was set when
the event was emitted; the receiver keeps ``now - sent_at``. ``GET /stats`` returns the count,
latency percentiles and the maximum; ``POST /reset`` clears them. Run: ``python receiver.py
PORT``.
"""

from __future__ import annotations

import json
import sys
import time

from aiohttp import web

latencies: list[float] = []
count = 0


async def hook(request: web.Request) -> web.Response:
    global count
    body = await request.read()
    count += 1
    sent_at = json.loads(body).get("data", {}).get("sent_at")
    if sent_at is not None:
        latencies.append(time.time() - sent_at)
    return web.Response(text='{"ok":true}', content_type="application/json")


async def stats(request: web.Request) -> web.Response:
    ordered = sorted(latencies)

    def pct(p: float) -> float | None:
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000 if ordered else None

    return web.json_response(
        {"count": count, "p50_ms": pct(0.50), "p99_ms": pct(0.99), "max_ms": pct(1.0)}
    )


async def reset(request: web.Request) -> web.Response:
    global count
    count = 0
    latencies.clear()
    return web.json_response({"ok": True})


def main() -> None:
    app = web.Application()
    app.router.add_get("/stats", stats)
    app.router.add_post("/reset", reset)
    app.router.add_post("/{tail:.*}", hook)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)


if __name__ == "__main__":
    main()
