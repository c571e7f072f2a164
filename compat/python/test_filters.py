"""Subscription filters on attributes: applied at delivery, validated at creation."""

from __future__ import annotations

import pytest
from google.api_core import exceptions as gexc

from helpers import pull, pull_until


def test_filter_delivers_only_matching(topic, make_sub, publisher, subscriber):
    sub = make_sub(topic, filter='attributes.kind = "paid" AND NOT attributes:test')
    futures = [
        publisher.publish(topic, b"paid-1", kind="paid"),
        publisher.publish(topic, b"free-1", kind="free"),
        publisher.publish(topic, b"paid-test", kind="paid", test="1"),
        publisher.publish(topic, b"none"),
        publisher.publish(topic, b"paid-2", kind="paid"),
    ]
    for f in futures:
        f.result(timeout=30)
    got = pull_until(subscriber, sub, want=2)
    assert sorted(m.message.data for m in got) == [b"paid-1", b"paid-2"]
    assert pull(subscriber, sub, wait=2.0) == [], "non-matching messages must never be delivered"


def test_filter_has_prefix(topic, make_sub, publisher, subscriber):
    sub = make_sub(topic, filter='hasPrefix(attributes.region, "eu-")')
    for data, region in [(b"a", "eu-west"), (b"b", "us-east"), (b"c", "eu-north")]:
        publisher.publish(topic, data, region=region).result(timeout=30)
    got = pull_until(subscriber, sub, want=2)
    assert sorted(m.message.data for m in got) == [b"a", b"c"]
    assert pull(subscriber, sub, wait=2.0) == []


def test_invalid_filter_is_invalid_argument(topic, names, subscriber):
    with pytest.raises(gexc.InvalidArgument):
        subscriber.create_subscription(
            request={"name": names.sub_path(), "topic": topic, "filter": "attributes.kind = = broken"}, timeout=10
        )
