"""Dead-letter policy: delivery attempts seen by the subscriber, then forwarding."""

from __future__ import annotations

from helpers import pull_until, stop, subscribe


def _nack_everything(message, _seen):
    message.nack()


def _dead_letter_setup(names, publisher, topic, make_sub):
    dead_topic = names.topic_path()
    publisher.create_topic(request={"name": dead_topic})
    dead_sub = make_sub(dead_topic)
    source = make_sub(topic, dead_letter_policy={"dead_letter_topic": dead_topic, "max_delivery_attempts": 5})
    return source, dead_sub


def test_dead_letter_after_max_attempts(names, topic, make_sub, publisher, subscriber):
    source, dead_sub = _dead_letter_setup(names, publisher, topic, make_sub)
    publisher.publish(topic, b"poison", origin="test").result(timeout=30)
    collector = subscribe(subscriber, source, _nack_everything)
    try:
        collector.wait(lambda: collector.count(b"poison") >= 5, 60, "five delivery attempts")
        (dead,) = pull_until(subscriber, dead_sub, want=1, timeout=30, alongside=collector)
    finally:
        stop(collector)
    attempts = [d.message.delivery_attempt for d in collector.snapshot()]
    assert attempts[:5] == [1, 2, 3, 4, 5], f"delivery_attempt as seen by the subscriber: {attempts}"
    assert dead.message.data == b"poison"
    assert dead.message.attributes["origin"] == "test"


def test_dead_letter_source_attributes(names, topic, make_sub, publisher, subscriber):
    source, dead_sub = _dead_letter_setup(names, publisher, topic, make_sub)
    publisher.publish(topic, b"poison").result(timeout=30)
    collector = subscribe(subscriber, source, _nack_everything)
    try:
        (dead,) = pull_until(subscriber, dead_sub, want=1, timeout=60, alongside=collector)
    finally:
        stop(collector)
    attrs = dict(dead.message.attributes)
    assert attrs.get("CloudPubSubDeadLetterSourceSubscription") == source.rsplit("/", 1)[1], attrs
    assert "CloudPubSubDeadLetterSourceDeliveryCount" in attrs, attrs


def test_no_dead_letter_policy_means_no_delivery_attempt(topic, make_sub, publisher, subscriber):
    sub = make_sub(topic)
    publisher.publish(topic, b"plain").result(timeout=30)
    (got,) = pull_until(subscriber, sub, want=1)
    assert got.delivery_attempt == 0


def test_dead_letter_without_pulling_source_again(names, topic, make_sub, publisher, subscriber):
    """After the 5th nack the message moves on its own; nobody pulls the source again."""
    source, dead_sub = _dead_letter_setup(names, publisher, topic, make_sub)
    publisher.publish(topic, b"poison").result(timeout=30)
    for attempt in range(1, 6):
        (got,) = pull_until(subscriber, source, want=1, ack_them=False, timeout=20)
        assert got.delivery_attempt == attempt
        subscriber.modify_ack_deadline(
            request={"subscription": source, "ack_ids": [got.ack_id], "ack_deadline_seconds": 0}
        )
    (dead,) = pull_until(subscriber, dead_sub, want=1, timeout=15)
    assert dead.message.data == b"poison"
