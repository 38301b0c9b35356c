"""A bulk send as an application makes it, for the kill -9 tests: ``sys.executable
tests/support/messaging_worker.py --store URL --solapi URL --count N`` stores ``N`` SMS as jobs
of one batch and sends them (``KMsg.send_many`` through the durable queue), then exits. The
queue and the reconciler themselves run as ``kmsg worker``.
"""

from __future__ import annotations

import argparse
import asyncio
from datetime import timedelta

from kmsg_webhook.messaging import (
    KMsg,
    Ok,
    SendQueueOptions,
    SolapiConfig,
    SolapiProvider,
    job_store_from_url,
)


async def bulk(args: argparse.Namespace) -> None:
    provider = SolapiProvider(
        SolapiConfig(
            api_key="NCSTESTKEY",
            api_secret="SOLAPISECRET",
            default_from="0212345678",
            base_url=args.solapi,
        )
    )
    options = SendQueueOptions(
        lease=timedelta(seconds=3), concurrency=8, interval=0.1, worker_id="bulk"
    )
    jobs = job_store_from_url(args.store)
    kmsg = KMsg([provider], jobs=jobs, queue_options=options)
    messages = [
        {"to": f"010-9{n:03d}-0000", "text": f"bulk {n}", "messageId": f"bulk-{n}"}
        for n in range(args.count)
    ]
    try:
        batch = await kmsg.send_many(messages)
        assert all(isinstance(r, Ok) for r in batch.results), batch
    finally:
        await kmsg.aclose()
        await jobs.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", required=True)
    parser.add_argument("--solapi", required=True)
    parser.add_argument("--count", type=int, default=100)
    asyncio.run(bulk(parser.parse_args()))
