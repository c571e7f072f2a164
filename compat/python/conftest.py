"""Fixtures: the target broker, the official clients, and uniquely named resources per test.

The target comes from PUBSUB_EMULATOR_HOST (host:port) and the project from PUBSUB_PROJECT_ID,
exactly as an application pointed at an emulator would be configured. Each test creates its own
topics and subscriptions with a random suffix and deletes them afterwards, so tests never see
each other's messages and a suite can run against a broker that already holds data.
"""

from __future__ import annotations

import os
import uuid
from typing import Callable, Iterator

import grpc
import pytest
from google.cloud import pubsub_v1
from google import pubsub_v1 as pubsub_v1_gapic
from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

EMULATOR_HOST = os.environ.get("PUBSUB_EMULATOR_HOST", "")
PROJECT = os.environ.get("PUBSUB_PROJECT_ID", "compat-project")


def pytest_configure(config: pytest.Config) -> None:
    if not EMULATOR_HOST:
        raise pytest.UsageError("set PUBSUB_EMULATOR_HOST=host:port to the broker under test")


@pytest.fixture(scope="session")
def project() -> str:
    return PROJECT


@pytest.fixture(scope="session")
def publisher() -> pubsub_v1.PublisherClient:
    """A default publisher: used for admin calls and single publishes."""
    return pubsub_v1.PublisherClient()


@pytest.fixture(scope="session")
def raw_publisher() -> pubsub_v1_gapic.PublisherClient:
    """The generated Publisher client without the batcher: one call is one Publish RPC."""
    return pubsub_v1_gapic.PublisherClient()


@pytest.fixture(scope="session")
def subscriber() -> Iterator[pubsub_v1.SubscriberClient]:
    client = pubsub_v1.SubscriberClient()
    yield client
    client.close()


@pytest.fixture(scope="session")
def big_subscriber() -> Iterator[pubsub_v1.SubscriberClient]:
    """A subscriber whose channel accepts responses of any size.

    In emulator mode the client builds a channel with gRPC's default 4 MiB receive limit, so a
    9 MB message cannot come back through it; passing our own channel lifts that limit.
    """
    channel = grpc.insecure_channel(
        EMULATOR_HOST,
        options=[("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)],
    )
    client = pubsub_v1.SubscriberClient(transport=SubscriberGrpcTransport(channel=channel))
    yield client
    client.close()


@pytest.fixture(scope="session")
def schema_client() -> pubsub_v1.SchemaServiceClient:
    return pubsub_v1.SchemaServiceClient()


class Names:
    """Makes unique resource paths for one test and remembers them for cleanup."""

    def __init__(self, project: str, label: str) -> None:
        self.project = project
        self.label = label[:40].replace("_", "-")
        self.topics: list[str] = []
        self.subs: list[str] = []
        self.snapshots: list[str] = []
        self.schemas: list[str] = []

    def _id(self, kind: str) -> str:
        return f"c-{self.label}-{kind}-{uuid.uuid4().hex[:8]}"

    def topic_path(self) -> str:
        path = f"projects/{self.project}/topics/{self._id('t')}"
        self.topics.append(path)
        return path

    def sub_path(self) -> str:
        path = f"projects/{self.project}/subscriptions/{self._id('s')}"
        self.subs.append(path)
        return path

    def snapshot_path(self) -> str:
        path = f"projects/{self.project}/snapshots/{self._id('snap')}"
        self.snapshots.append(path)
        return path

    def schema_id(self) -> str:
        schema_id = self._id("schema")
        self.schemas.append(f"projects/{self.project}/schemas/{schema_id}")
        return schema_id


@pytest.fixture
def names(
    request: pytest.FixtureRequest,
    project: str,
    publisher: pubsub_v1.PublisherClient,
    subscriber: pubsub_v1.SubscriberClient,
    schema_client: pubsub_v1.SchemaServiceClient,
) -> Iterator[Names]:
    n = Names(project, request.node.name.removeprefix("test_"))
    yield n
    # Best effort: a resource may never have been created, or the broker may lack the RPC.
    for snap in n.snapshots:
        _quietly(lambda: subscriber.delete_snapshot(request={"snapshot": snap}, timeout=5))
    for sub in n.subs:
        _quietly(lambda: subscriber.delete_subscription(request={"subscription": sub}, timeout=5))
    for topic in n.topics:
        _quietly(lambda: publisher.delete_topic(request={"topic": topic}, timeout=5))
    for schema in n.schemas:
        _quietly(lambda: schema_client.delete_schema(request={"name": schema}, timeout=5))


def _quietly(call: Callable[[], object]) -> None:
    try:
        call()
    except Exception:  # noqa: BLE001 - cleanup must not mask the test's own result
        pass


@pytest.fixture
def topic(names: Names, publisher: pubsub_v1.PublisherClient) -> str:
    """A fresh topic."""
    path = names.topic_path()
    publisher.create_topic(request={"name": path})
    return path


@pytest.fixture
def make_sub(names: Names, subscriber: pubsub_v1.SubscriberClient) -> Callable[..., str]:
    """Creates a subscription on a topic with extra fields; returns its path."""

    def make(topic: str, **fields: object) -> str:
        path = names.sub_path()
        subscriber.create_subscription(request={"name": path, "topic": topic, **fields})
        return path

    return make
