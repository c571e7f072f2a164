"""Exactly-once delivery: per-message ack results through ack_with_response()."""

from __future__ import annotations

import threading

from google.cloud.pubsub_v1.subscriber import exceptions as sub_exc

from helpers import stop, subscribe


def test_ack_with_response_succeeds(topic, make_sub, publisher, subscriber):
    sub = make_sub(topic, enable_exactly_once_delivery=True)
    results: dict[bytes, object] = {}
    lock = threading.Lock()

    def ack_and_wait(message, _seen):
        try:
            outcome = message.ack_with_response().result(timeout=20)
        except Exception as err:  # noqa: BLE001 - recorded and asserted below
            outcome = err
        with lock:
            results[message.data] = outcome

    for i in range(5):
        publisher.publish(topic, f"eod-{i}".encode()).result(timeout=30)
    collector = subscribe(subscriber, sub, ack_and_wait)
    try:
        collector.wait(lambda: len(results) == 5, 40, "five ack results")
    finally:
        stop(collector)
    assert set(results.values()) == {sub_exc.AcknowledgeStatus.SUCCESS}, results
    assert all(collector.count(f"eod-{i}".encode()) == 1 for i in range(5)), "exactly-once: no redelivery"


def test_stale_ack_id_is_rejected(topic, make_sub, publisher, subscriber):
    """After a nack and a redelivery, the first lease's ack id no longer acknowledges anything."""
    sub = make_sub(topic, enable_exactly_once_delivery=True)
    outcome: dict[str, object] = {}
    first: list = []

    def on_message(message, seen):
        if seen == 1:
            first.append(message)
            message.nack_with_response().result(timeout=20)
            return
        try:
            first[0].ack_with_response().result(timeout=20)
            outcome["stale"] = "accepted"
        except sub_exc.AcknowledgeError as err:
            outcome["stale"] = err.error_code
        outcome["fresh"] = message.ack_with_response().result(timeout=20)

    publisher.publish(topic, b"eod-stale").result(timeout=30)
    collector = subscribe(subscriber, sub, on_message)
    try:
        collector.wait(lambda: "fresh" in outcome, 40, "the redelivery's ack result")
    finally:
        stop(collector)
    assert outcome["stale"] == sub_exc.AcknowledgeStatus.INVALID_ACK_ID, outcome
    assert outcome["fresh"] == sub_exc.AcknowledgeStatus.SUCCESS, outcome
