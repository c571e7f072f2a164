"""The client's REST transport against the broker's REST surface (same port as gRPC).

In emulator mode the client always builds a gRPC channel, so these clients are made with
PUBSUB_EMULATOR_HOST removed and the broker given as an http:// api_endpoint instead.
"""

from __future__ import annotations

import pytest
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import pubsub_v1

from conftest import EMULATOR_HOST
from helpers import pull_until


@pytest.fixture
def rest_publisher(monkeypatch):
    monkeypatch.delenv("PUBSUB_EMULATOR_HOST")
    client = pubsub_v1.PublisherClient(
        credentials=AnonymousCredentials(),
        transport="rest",
        client_options=ClientOptions(api_endpoint=f"http://{EMULATOR_HOST}"),
    )
    return client


def test_rest_publish_with_data_and_attributes(topic, make_sub, rest_publisher, subscriber):
    sub = make_sub(topic)
    rest_publisher.publish(topic, b"over-rest", via="rest").result(timeout=30)
    (got,) = pull_until(subscriber, sub, want=1)
    assert got.message.data == b"over-rest"
    assert dict(got.message.attributes) == {"via": "rest"}


def test_rest_publish_attributes_only(topic, make_sub, rest_publisher, subscriber):
    sub = make_sub(topic)
    rest_publisher.publish(topic, b"", only="attributes").result(timeout=30)
    (got,) = pull_until(subscriber, sub, want=1)
    assert got.message.data == b""
    assert dict(got.message.attributes) == {"only": "attributes"}
