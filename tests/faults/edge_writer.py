"""The edge side of the fault campaign: the real fare store and uploader under load.

Run as a script (the campaign SIGKILLs it at random moments): it records synthetic
segments into a :class:`edge._store.FareStore` (SQLite WAL, FULL) as fast as ``--rate``
allows and uploads them with the edge's own :class:`edge._uplink.MqttLink` and
:class:`edge._uplink.FareUploader`. It prints ``R <seq>`` for each event only AFTER its
commit returned, so every printed seq must end up in the backend's ledger. With
``--drain`` it records nothing and exits (printing ``DRAINED <last_seq>``) once the
backend has acknowledged every recorded event.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys


async def main(a: argparse.Namespace) -> None:
    from busbell import DeviceKey, Topics, configure_logging
    from busbell._mqtt import MqttSettings
    from edge._events import EventBuilder
    from edge._store import FareStore
    from edge._uplink import FareUploader, MqttLink, UplinkSettings
    from tests.factories.drafts import synthetic_draft

    configure_logging("error")
    key = DeviceKey.from_seed(bytes(range(32)))
    store = await FareStore.open(a.db, EventBuilder(a.bus, key))
    topics = Topics(a.prefix)
    settings = MqttSettings(
        host="127.0.0.1",
        port=a.port,
        prefix=a.prefix,
        client_id=f"fault-edge-{a.bus}",
        backoff_initial_s=0.05,
        backoff_max_s=0.5,
    )
    link = MqttLink(settings, a.bus, topics)
    up = FareUploader(store, a.bus, topics, UplinkSettings(ack_timeout_s=2.0))
    up.attach(link)
    out = sys.stdout
    rng = random.Random(os.getpid())

    async def produce() -> None:
        i = store.last_seq
        while True:
            n = rng.randint(1, 4)
            events = await store.append_many(synthetic_draft(i + k) for k in range(n))
            i += n
            out.write("".join(f"R {e['seq']}\n" for e in events))
            out.flush()
            up.notify()
            await asyncio.sleep(rng.uniform(0, 2.0 / a.rate))

    async def drained() -> None:
        while store.acked_upto < store.last_seq:
            await asyncio.sleep(0.05)
        out.write(f"DRAINED {store.last_seq}\n")
        out.flush()
        await store.close()
        os._exit(0)  # everything is committed and acknowledged: leave at once

    async with asyncio.TaskGroup() as tg:
        tg.create_task(link.run())
        tg.create_task(up.run(link))
        tg.create_task(drained() if a.drain else produce())


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("db")
    ap.add_argument("port", type=int)
    ap.add_argument("prefix")
    ap.add_argument("--bus", default="bus-fault")
    ap.add_argument("--rate", type=float, default=200.0, help="events per second (about)")
    ap.add_argument("--drain", action="store_true")
    asyncio.run(main(ap.parse_args()))
