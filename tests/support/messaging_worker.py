"""A service process using the messaging module as an application embeds it, for the kill -9
tests: ``sys.executable tests/support/messaging_worker.py MODE --store URL --solapi URL
--worker-id N``.

``reconciler``: checks the tracked messages' status with SOLAPI (a local fake), emits the webhook
events into a runtime on the same store (which delivers them) and sends ALIMTALK -> SMS
fallbacks through KMsg. ``queue``: sends due jobs of the send queue. ``bulk``: one
``send_many`` of ``--count`` SMS through the queue, then exits. SIGTERM stops the services.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from datetime import timedelta
from typing import Any

from kmsg_webhook import SecurityOptions, WebhookConfig, WebhookRuntimeService
from kmsg_webhook.messaging import (
    ApiFailoverConfig,
    DeliveryTrackingService,
    FallbackContext,
    KMsg,
    KMsgDefaults,
    Ok,
    PollingConfig,
    SendQueueOptions,
    SmsSendOptions,
    SolapiConfig,
    SolapiProvider,
    job_store_from_url,
    tracking_store_from_url,
)


def provider(args: argparse.Namespace) -> SolapiProvider:
    return SolapiProvider(
        SolapiConfig(
            api_key=args.api_key,
            api_secret=args.api_secret,
            default_from="0212345678",
            kakao_pf_id="PF1",
            base_url=args.solapi,
        )
    )


async def until_sigterm() -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()


async def reconciler(args: argparse.Namespace) -> None:
    solapi = provider(args)
    store = tracking_store_from_url(args.store)
    runtime = WebhookRuntimeService(
        WebhookConfig(jitter=False),
        persistence=args.store,
        security=SecurityOptions(allow_private_hosts=True),
    )
    holder: dict[str, KMsg] = {}

    async def fallback(options: SmsSendOptions, ctx: FallbackContext) -> Any:
        return await holder["kmsg"].send(options)

    tracking = DeliveryTrackingService(
        [solapi],
        store=store,
        polling=PollingConfig(
            interval=0.1,
            concurrency=1,  # one record after another: the tests know where a kill lands
            lease=timedelta(seconds=args.lease_s),
        ),
        api_failover=ApiFailoverConfig(sender=fallback),
        webhooks=runtime,
        worker_id=args.worker_id,
    )
    holder["kmsg"] = KMsg(
        [solapi],
        hooks=tracking.hooks(),
        webhooks=runtime,
        defaults=KMsgDefaults(kakao_plus_id="@brand"),
    )
    await runtime.start()
    tracking.start()
    try:
        await until_sigterm()
    finally:
        await tracking.stop()
        await runtime.shutdown()
        await holder["kmsg"].aclose()
        await store.close()


def queue_kmsg(args: argparse.Namespace) -> KMsg:
    options = SendQueueOptions(
        lease=timedelta(seconds=args.lease_s), concurrency=8, interval=0.1, worker_id=args.worker_id
    )
    jobs = job_store_from_url(args.store)
    return KMsg([provider(args)], jobs=jobs, queue_options=options)


async def queue(args: argparse.Namespace) -> None:
    kmsg = queue_kmsg(args)
    assert kmsg.queue is not None
    kmsg.queue.start()
    try:
        await until_sigterm()
    finally:
        await kmsg.queue.stop()
        await kmsg.aclose()
        await kmsg.queue.store.close()


async def bulk(args: argparse.Namespace) -> None:
    kmsg = queue_kmsg(args)
    assert kmsg.queue is not None
    messages = [
        {"to": f"010-9{n:03d}-0000", "text": f"bulk {n}", "messageId": f"bulk-{n}"}
        for n in range(args.count)
    ]
    try:
        batch = await kmsg.send_many(messages)
        assert all(isinstance(r, Ok) for r in batch.results), batch
    finally:
        await kmsg.aclose()
        await kmsg.queue.store.close()


MODES = {"reconciler": reconciler, "queue": queue, "bulk": bulk}

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=sorted(MODES))
    parser.add_argument("--store", required=True)
    parser.add_argument("--solapi", required=True)
    parser.add_argument("--api-key", default="NCSTESTKEY")
    parser.add_argument("--api-secret", default="SOLAPISECRET")
    parser.add_argument("--worker-id", required=True)
    parser.add_argument("--lease-s", type=float, default=3.0)
    parser.add_argument("--count", type=int, default=100)
    arguments = parser.parse_args()
    asyncio.run(MODES[arguments.mode](arguments))
