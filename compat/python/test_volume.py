"""Size and volume: a 9 MB message, and 10,000 messages through one flow-controlled stream."""

from __future__ import annotations

import hashlib
import threading

from google.cloud import pubsub_v1

from helpers import stop, subscribe

NINE_MB = 9 * 1000 * 1000


def test_nine_megabyte_message(topic, make_sub, publisher, big_subscriber):
    sub = make_sub(topic)
    data = hashlib.sha256(b"seed").digest() * (NINE_MB // 32)
    assert len(data) == NINE_MB
    publisher.publish(topic, data, size=str(len(data))).result(timeout=60)
    # The default emulator-mode channel receives at most 4 MiB; big_subscriber lifts that.
    response = big_subscriber.pull(request={"subscription": sub, "max_messages": 1}, timeout=30)
    (got,) = response.received_messages
    assert len(got.message.data) == NINE_MB
    assert hashlib.sha256(got.message.data).digest() == hashlib.sha256(data).digest()
    big_subscriber.acknowledge(request={"subscription": sub, "ack_ids": [got.ack_id]})


def test_ten_thousand_messages_with_flow_control(topic, make_sub, publisher, subscriber):
    total = 10_000
    sub = make_sub(topic, ack_deadline_seconds=60)
    futures = [publisher.publish(topic, str(i).encode()) for i in range(total)]
    for f in futures:
        f.result(timeout=60)

    outstanding = 0
    peak = 0
    lock = threading.Lock()

    def on_message(message, _seen):
        nonlocal outstanding, peak
        with lock:
            outstanding += 1
            peak = max(peak, outstanding)
        message.ack()
        with lock:
            outstanding -= 1

    flow = pubsub_v1.types.FlowControl(max_messages=100)
    collector = subscribe(subscriber, sub, on_message, flow_control=flow)
    try:
        collector.wait(lambda: collector.distinct() == total, 120, f"{total} distinct messages")
    finally:
        stop(collector)
    deliveries = len(collector.snapshot())
    duplicates = deliveries - total
    print(f"10k: {deliveries} deliveries, {duplicates} duplicates, peak callbacks in flight {peak}")
    assert {int(k) for k in collector.per_data} == set(range(total)), "messages lost"
    assert peak <= 100


def test_default_client_cannot_receive_nine_megabytes(topic, make_sub, publisher, subscriber):
    """The client's emulator-mode channel keeps gRPC's 4 MiB receive limit (a client property)."""
    from google.api_core import exceptions as gexc
    import pytest

    sub = make_sub(topic)
    publisher.publish(topic, b"x" * NINE_MB).result(timeout=60)
    with pytest.raises(gexc.ResourceExhausted):
        subscriber.pull(request={"subscription": sub, "max_messages": 1}, timeout=30, retry=None)
