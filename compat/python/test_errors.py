"""Error codes the client surfaces: NotFound, AlreadyExists, InvalidArgument."""

from __future__ import annotations

import pytest
from google.api_core import exceptions as gexc


def test_get_missing_topic_is_not_found(names, publisher):
    with pytest.raises(gexc.NotFound):
        publisher.get_topic(request={"topic": names.topic_path()}, timeout=10)


def test_publish_to_missing_topic_is_not_found(names, publisher):
    with pytest.raises(gexc.NotFound):
        publisher.publish(names.topic_path(), b"lost").result(timeout=30)


def test_subscription_on_missing_topic_is_not_found(names, subscriber):
    with pytest.raises(gexc.NotFound):
        subscriber.create_subscription(request={"name": names.sub_path(), "topic": names.topic_path()}, timeout=10)


def test_pull_missing_subscription_is_not_found(names, subscriber):
    with pytest.raises(gexc.NotFound):
        subscriber.pull(request={"subscription": names.sub_path(), "max_messages": 1}, timeout=10, retry=None)


def test_duplicate_topic_is_already_exists(topic, publisher):
    with pytest.raises(gexc.AlreadyExists):
        publisher.create_topic(request={"name": topic}, timeout=10)


def test_duplicate_subscription_is_already_exists(topic, make_sub, subscriber):
    sub = make_sub(topic)
    with pytest.raises(gexc.AlreadyExists):
        subscriber.create_subscription(request={"name": sub, "topic": topic}, timeout=10)


@pytest.mark.parametrize("bad_id", ["1starts-with-digit", "goog-reserved", "ab", "has space", "x" * 256])
def test_bad_topic_name_is_invalid_argument(project, publisher, bad_id):
    with pytest.raises(gexc.InvalidArgument):
        publisher.create_topic(request={"name": f"projects/{project}/topics/{bad_id}"}, timeout=10)


def test_ack_deadline_601_is_invalid_argument(topic, names, subscriber):
    with pytest.raises(gexc.InvalidArgument):
        subscriber.create_subscription(
            request={"name": names.sub_path(), "topic": topic, "ack_deadline_seconds": 601}, timeout=10
        )


def test_ack_deadline_5_is_invalid_argument(topic, names, subscriber):
    with pytest.raises(gexc.InvalidArgument):
        subscriber.create_subscription(
            request={"name": names.sub_path(), "topic": topic, "ack_deadline_seconds": 5}, timeout=10
        )


def test_modify_ack_deadline_700_is_invalid_argument(topic, make_sub, publisher, subscriber):
    from helpers import pull_until

    sub = make_sub(topic)
    publisher.publish(topic, b"m").result(timeout=30)
    (got,) = pull_until(subscriber, sub, want=1, ack_them=False)
    with pytest.raises(gexc.InvalidArgument):
        subscriber.modify_ack_deadline(
            request={"subscription": sub, "ack_ids": [got.ack_id], "ack_deadline_seconds": 700}, timeout=10
        )


def test_empty_message_is_invalid_argument(topic, raw_publisher):
    with pytest.raises(gexc.InvalidArgument):
        raw_publisher.publish(request={"topic": topic, "messages": [{"data": b""}]}, timeout=10)


def test_detached_subscription_pull_is_failed_precondition(topic, make_sub, publisher, subscriber):
    sub = make_sub(topic)
    publisher.detach_subscription(request={"subscription": sub}, timeout=10)
    assert subscriber.get_subscription(request={"subscription": sub}).detached
    with pytest.raises(gexc.FailedPrecondition):
        subscriber.pull(request={"subscription": sub, "max_messages": 1}, timeout=10, retry=None)
