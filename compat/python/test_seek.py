"""Seek: replay acknowledged messages by time, and return to a snapshot."""

from __future__ import annotations

import datetime

from helpers import pull, pull_until


def test_seek_to_time_replays_acked(topic, make_sub, publisher, subscriber):
    sub = make_sub(topic, retain_acked_messages=True)
    before = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=5)
    for i in range(3):
        publisher.publish(topic, f"t-{i}".encode()).result(timeout=30)
    pull_until(subscriber, sub, want=3)
    assert pull(subscriber, sub, wait=1.0) == []
    subscriber.seek(request={"subscription": sub, "time": before})
    again = pull_until(subscriber, sub, want=3)
    assert sorted(m.message.data for m in again) == [b"t-0", b"t-1", b"t-2"]


def test_seek_to_snapshot(names, topic, make_sub, publisher, subscriber):
    sub = make_sub(topic)
    publisher.publish(topic, b"before").result(timeout=30)
    pull_until(subscriber, sub, want=1)
    snap = names.snapshot_path()
    subscriber.create_snapshot(request={"name": snap, "subscription": sub})
    for data in (b"after-1", b"after-2"):
        publisher.publish(topic, data).result(timeout=30)
    pull_until(subscriber, sub, want=2)
    subscriber.seek(request={"subscription": sub, "snapshot": snap})
    again = pull_until(subscriber, sub, want=2)
    assert sorted(m.message.data for m in again) == [b"after-1", b"after-2"]
    assert pull(subscriber, sub, wait=1.0) == [], "what was acked before the snapshot stays acked"
