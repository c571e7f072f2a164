"""The streaming subscriber (`subscribe()`, StreamingPull): ack, nack, deadlines and leases."""

from __future__ import annotations

import threading
import time

from google.cloud import pubsub_v1

from helpers import ack, pull, pull_until, stop, subscribe


def test_subscribe_and_ack(topic, make_sub, publisher, subscriber):
    sub = make_sub(topic)
    payloads = {f"s-{i}".encode() for i in range(20)}
    for data in payloads:
        publisher.publish(topic, data, n="1")
    collector = subscribe(subscriber, sub, ack)
    try:
        collector.wait(lambda: collector.distinct() == len(payloads), 30, "20 messages on the stream")
        received = {d.message.data for d in collector.snapshot()}
        assert received == payloads
        assert all(d.message.attributes["n"] == "1" for d in collector.snapshot())
    finally:
        stop(collector)
    # Acked on the stream's side: a unary pull finds nothing left.
    assert pull(subscriber, sub, wait=2.0) == []


def test_nack_redelivers(topic, make_sub, publisher, subscriber):
    sub = make_sub(topic)

    def nack_first(message, seen):
        if seen == 1:
            message.nack()
        else:
            message.ack()

    publisher.publish(topic, b"nack-me").result(timeout=30)
    collector = subscribe(subscriber, sub, nack_first)
    try:
        collector.wait(lambda: collector.count(b"nack-me") >= 2, 30, "redelivery after nack")
    finally:
        stop(collector)
    first, second = collector.snapshot()[:2]
    assert first.message.message_id == second.message.message_id
    assert first.message.ack_id != second.message.ack_id, "a redelivery is a new lease with its own ack id"


def test_unary_ack_deadline_expiry_redelivers(topic, make_sub, publisher, subscriber):
    sub = make_sub(topic, ack_deadline_seconds=10)
    publisher.publish(topic, b"expire").result(timeout=30)
    (first,) = pull_until(subscriber, sub, want=1, ack_them=False)
    leased_at = time.monotonic()
    # While the lease holds, nobody else gets the message.
    assert pull(subscriber, sub, wait=2.0) == []
    (again,) = pull_until(subscriber, sub, want=1, timeout=25)
    waited = time.monotonic() - leased_at
    assert again.message.message_id == first.message.message_id
    assert waited >= 8, f"redelivered after {waited:.1f}s, before the 10 s ack deadline"


def test_modify_ack_deadline_zero_redelivers_now(topic, make_sub, publisher, subscriber):
    sub = make_sub(topic, ack_deadline_seconds=60)
    publisher.publish(topic, b"modack-0").result(timeout=30)
    (first,) = pull_until(subscriber, sub, want=1, ack_them=False)
    subscriber.modify_ack_deadline(request={"subscription": sub, "ack_ids": [first.ack_id], "ack_deadline_seconds": 0})
    (again,) = pull_until(subscriber, sub, want=1, timeout=10)
    assert again.message.message_id == first.message.message_id


def test_lease_extension_holds_message_past_deadline(topic, make_sub, publisher, subscriber):
    """The client keeps extending the lease, so a message held past 10 s is not redelivered."""
    sub = make_sub(topic, ack_deadline_seconds=10)
    release = threading.Event()

    def hold_then_ack(message, seen):
        threading.Thread(target=lambda: (release.wait(20), message.ack()), daemon=True).start()

    publisher.publish(topic, b"held").result(timeout=30)
    # Lease extensions of 10 s: the client re-modacks before 90% of that.
    flow = pubsub_v1.types.FlowControl(max_duration_per_lease_extension=10)
    collector = subscribe(subscriber, sub, hold_then_ack, flow_control=flow)
    try:
        collector.wait(lambda: collector.count(b"held") >= 1, 30, "the first delivery")
        first_at = collector.snapshot()[0].at
        # Hold well past the 10 s deadline; a lost lease shows up as a second delivery.
        collector.wait(lambda: time.monotonic() - first_at >= 14 or collector.count(b"held") > 1, 30, "14 s held")
        assert collector.count(b"held") == 1, "redelivered while the client was extending its lease"
        release.set()
    finally:
        release.set()
        stop(collector)


def test_max_lease_duration_lets_message_expire(topic, make_sub, publisher, subscriber):
    """Past the client's max lease the client stops extending and the broker redelivers."""
    sub = make_sub(topic, ack_deadline_seconds=10)

    def keep_first(message, seen):
        if seen > 1:
            message.ack()

    publisher.publish(topic, b"dropped-lease").result(timeout=30)
    flow = pubsub_v1.types.FlowControl(max_lease_duration=2, max_duration_per_lease_extension=10)
    collector = subscribe(subscriber, sub, keep_first, flow_control=flow)
    try:
        collector.wait(lambda: collector.count(b"dropped-lease") >= 2, 40, "redelivery after the lease ran out")
    finally:
        stop(collector)
    first, second = collector.snapshot()[:2]
    assert first.message.message_id == second.message.message_id
    assert second.at - first.at >= 5, "redelivered long before any ack deadline could have passed"
