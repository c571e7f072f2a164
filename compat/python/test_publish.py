"""Publishing through the client's batcher, with attributes, read back by unary Pull."""

from __future__ import annotations

from google.cloud import pubsub_v1

from helpers import pull_until


def test_publish_batched_with_attributes(topic, make_sub, subscriber):
    sub = make_sub(topic)
    # Small batches with a short latency: 25 messages go out as several Publish calls.
    batching = pubsub_v1.PublisherClient(
        batch_settings=pubsub_v1.types.BatchSettings(max_messages=10, max_bytes=64 * 1024, max_latency=0.05)
    )
    futures = [
        batching.publish(topic, f"m-{i}".encode(), index=str(i), kind="even" if i % 2 == 0 else "odd")
        for i in range(25)
    ]
    ids = [f.result(timeout=30) for f in futures]
    assert len(set(ids)) == 25, "every message gets its own id"

    got = pull_until(subscriber, sub, want=25)
    by_data = {m.message.data: m.message for m in got}
    assert sorted(by_data) == sorted(f"m-{i}".encode() for i in range(25))
    for i in range(25):
        msg = by_data[f"m-{i}".encode()]
        assert dict(msg.attributes) == {"index": str(i), "kind": "even" if i % 2 == 0 else "odd"}
        assert msg.message_id in ids
        assert msg.publish_time is not None


def test_publish_attributes_only_message(topic, make_sub, publisher, subscriber):
    sub = make_sub(topic)
    publisher.publish(topic, b"", only="attributes").result(timeout=30)
    (got,) = pull_until(subscriber, sub, want=1)
    assert got.message.data == b""
    assert dict(got.message.attributes) == {"only": "attributes"}


def test_publish_returns_ids_in_order_of_batch(topic, make_sub, raw_publisher, subscriber):
    sub = make_sub(topic)
    response = raw_publisher.publish(
        request={"topic": topic, "messages": [{"data": f"x{i}".encode()} for i in range(5)]}, timeout=30
    )
    assert len(response.message_ids) == 5
    got = pull_until(subscriber, sub, want=5)
    id_of = {m.message.data: m.message.message_id for m in got}
    assert [id_of[f"x{i}".encode()] for i in range(5)] == list(response.message_ids)
