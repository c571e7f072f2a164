"""Bounded waiting and message collection shared by the scenarios.

Every wait here has a deadline: a broker that misbehaves makes a scenario fail with a message
saying what was missing, never hang. Nothing sleeps to assert timing; waits end as soon as the
condition holds.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Optional

from google.api_core import exceptions as gexc
from google.cloud import pubsub_v1


class WaitTimeout(AssertionError):
    """A bounded wait ran out: the condition it names never became true."""


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, poll: float = 0.05) -> None:
    """Polls `predicate` until it is true or `timeout` seconds pass (then fails naming `what`)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(poll)


@dataclass
class Delivery:
    """One message as a streaming subscriber saw it, with when it arrived."""

    message: pubsub_v1.subscriber.message.Message
    at: float


@dataclass
class Collector:
    """Records what a streaming subscriber receives; the callback decides whether to ack.

    `on_message(message, count_for_this_data)` returns nothing; it may ack, nack or keep the
    message. The stream's future is watched so that a stream that fails (for example a broker
    answering UNIMPLEMENTED) fails the wait at once with the stream's error.
    """

    on_message: Callable[[pubsub_v1.subscriber.message.Message, int], None]
    deliveries: list[Delivery] = field(default_factory=list)
    per_data: Counter = field(default_factory=Counter)
    future: Optional[pubsub_v1.subscriber.futures.StreamingPullFuture] = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    callback_errors: list[BaseException] = field(default_factory=list)

    def __call__(self, message: pubsub_v1.subscriber.message.Message) -> None:
        with self.lock:
            self.deliveries.append(Delivery(message, time.monotonic()))
            self.per_data[message.data] += 1
            seen = self.per_data[message.data]
        try:
            self.on_message(message, seen)
        except BaseException as err:  # noqa: BLE001 - surfaced by wait(), not lost in a thread
            self.callback_errors.append(err)

    def distinct(self) -> int:
        """How many different payloads were received."""
        with self.lock:
            return len(self.per_data)

    def count(self, data: bytes) -> int:
        """How many times the payload `data` was delivered."""
        with self.lock:
            return self.per_data[data]

    def snapshot(self) -> list[Delivery]:
        """A copy of every delivery so far, in arrival order."""
        with self.lock:
            return list(self.deliveries)

    def check(self, what: str = "messages") -> None:
        """Raises if a callback failed or the stream ended (for example UNIMPLEMENTED)."""
        if self.callback_errors:
            raise self.callback_errors[0]
        if self.future is not None and self.future.done():
            err = self.future.exception()
            raise AssertionError(f"streaming pull ended while waiting for {what}: {err!r}")

    def wait(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        """Waits for `predicate`, failing early if the stream dies or a callback raised."""

        def done() -> bool:
            self.check(what)
            return predicate()

        wait_until(done, timeout, what)


def subscribe(
    subscriber: pubsub_v1.SubscriberClient,
    subscription: str,
    on_message: Callable[[pubsub_v1.subscriber.message.Message, int], None],
    flow_control: Optional[pubsub_v1.types.FlowControl] = None,
) -> Collector:
    """Opens a streaming pull on `subscription` that feeds a new Collector."""
    collector = Collector(on_message)
    kwargs = {}
    if flow_control is not None:
        kwargs["flow_control"] = flow_control
    collector.future = subscriber.subscribe(subscription, callback=collector, **kwargs)
    return collector


def stop(collector: Collector) -> None:
    """Closes the collector's stream and waits (bounded) for it to finish."""
    if collector.future is None:
        return
    collector.future.cancel()
    try:
        collector.future.result(timeout=10)
    except Exception:  # noqa: BLE001 - a cancelled or failed stream is fine at teardown
        pass


def ack(message: pubsub_v1.subscriber.message.Message, _seen: int) -> None:
    """A callback that acknowledges everything."""
    message.ack()


def pull(
    subscriber: pubsub_v1.SubscriberClient, subscription: str, max_messages: int = 100, wait: float = 3.0
) -> list:
    """One unary Pull that waits at most `wait` seconds; no messages gives an empty list.

    Brokers may hold a Pull open until messages arrive (long poll), so the call's own deadline
    bounds it; a deadline with nothing to return is the "empty" answer, not an error.
    """
    try:
        response = subscriber.pull(
            request={"subscription": subscription, "max_messages": max_messages},
            timeout=wait,
            retry=None,
        )
    except gexc.DeadlineExceeded:
        return []
    return list(response.received_messages)


def pull_until(
    subscriber: pubsub_v1.SubscriberClient,
    subscription: str,
    want: int,
    timeout: float = 20.0,
    ack_them: bool = True,
    alongside: Optional[Collector] = None,
) -> list:
    """Pulls (acking if asked) until `want` messages arrived or `timeout` passes.

    With `alongside`, fails at once if that streaming subscriber's stream ends, since the
    messages awaited here depend on it.
    """
    got: list = []
    deadline = time.monotonic() + timeout
    while len(got) < want:
        if alongside is not None:
            alongside.check(f"{want} messages on {subscription}")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise WaitTimeout(f"pulled {len(got)} of {want} messages from {subscription} in {timeout:.0f}s")
        batch = pull(subscriber, subscription, max_messages=min(1000, want - len(got)), wait=min(3.0, remaining))
        if batch and ack_them:
            subscriber.acknowledge(request={"subscription": subscription, "ack_ids": [m.ack_id for m in batch]})
        got.extend(batch)
    return got
