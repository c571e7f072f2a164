"""Ordering keys: per-key order on the stream, and resume_publish after a failed publish."""

from __future__ import annotations

import pytest
from google.cloud import pubsub_v1
from google.cloud.pubsub_v1.publisher import exceptions as pub_exc

from helpers import ack, stop, subscribe

# Kept small: a broker that releases one message per key at a time (see docs/compatibility.md)
# needs a round trip per message.
PER_KEY = 15


@pytest.fixture
def ordered_publisher():
    return pubsub_v1.PublisherClient(publisher_options=pubsub_v1.types.PublisherOptions(enable_message_ordering=True))


def test_ordering_keys_keep_order(topic, make_sub, ordered_publisher, subscriber):
    sub = make_sub(topic, enable_message_ordering=True)
    futures = []
    for i in range(PER_KEY):
        for key in ("alpha", "beta"):
            futures.append(ordered_publisher.publish(topic, f"{key}-{i}".encode(), ordering_key=key))
    for f in futures:
        f.result(timeout=30)
    collector = subscribe(subscriber, sub, ack)
    try:
        collector.wait(lambda: collector.distinct() == 2 * PER_KEY, 45, f"{2 * PER_KEY} ordered messages")
    finally:
        stop(collector)
    for key in ("alpha", "beta"):
        first_seen: list[int] = []
        for d in collector.snapshot():
            if d.message.ordering_key != key:
                continue
            n = int(d.message.data.decode().split("-")[1])
            if n not in first_seen:
                first_seen.append(n)
        assert first_seen == list(range(PER_KEY)), f"key {key} delivered out of order: {first_seen}"


def test_resume_publish_after_failure(names, ordered_publisher, publisher):
    missing = names.topic_path()  # not created yet: the publish fails
    with pytest.raises(Exception) as failed:
        ordered_publisher.publish(missing, b"first", ordering_key="k").result(timeout=30)
    assert "NotFound" in type(failed.value).__name__ or "404" in str(failed.value)
    # The key is paused: further publishes with it fail at once, without reaching the broker.
    with pytest.raises(pub_exc.PublishToPausedOrderingKeyException):
        ordered_publisher.publish(missing, b"second", ordering_key="k").result(timeout=30)
    publisher.create_topic(request={"name": missing})
    ordered_publisher.resume_publish(missing, "k")
    message_id = ordered_publisher.publish(missing, b"third", ordering_key="k").result(timeout=30)
    assert message_id
