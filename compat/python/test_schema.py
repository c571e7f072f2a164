"""Schema-validated publish: an Avro schema on a topic with JSON encoding."""

from __future__ import annotations

import json

import pytest
from google.api_core import exceptions as gexc
from google.pubsub_v1.types import Encoding, Schema

from helpers import pull_until

AVRO = json.dumps(
    {
        "type": "record",
        "name": "Order",
        "fields": [{"name": "id", "type": "string"}, {"name": "amount", "type": "int"}],
    }
)


@pytest.fixture
def schema_topic(names, project, publisher, schema_client):
    schema_id = names.schema_id()
    schema = schema_client.create_schema(
        request={
            "parent": f"projects/{project}",
            "schema": Schema(type_=Schema.Type.AVRO, definition=AVRO),
            "schema_id": schema_id,
        }
    )
    topic = names.topic_path()
    publisher.create_topic(
        request={"name": topic, "schema_settings": {"schema": schema.name, "encoding": Encoding.JSON}}
    )
    return topic


def test_schema_accepts_valid_message(schema_topic, make_sub, publisher, subscriber):
    sub = make_sub(schema_topic)
    body = json.dumps({"id": "o-1", "amount": 42}).encode()
    publisher.publish(schema_topic, body).result(timeout=30)
    (got,) = pull_until(subscriber, sub, want=1)
    assert json.loads(got.message.data) == {"id": "o-1", "amount": 42}


def test_schema_rejects_invalid_message(schema_topic, publisher):
    with pytest.raises(gexc.InvalidArgument):
        publisher.publish(schema_topic, json.dumps({"id": "o-2", "amount": "lots"}).encode()).result(timeout=30)


def test_validate_message_against_schema(names, project, schema_client):
    ok = schema_client.validate_message(
        request={
            "parent": f"projects/{project}",
            "schema": Schema(type_=Schema.Type.AVRO, definition=AVRO),
            "message": json.dumps({"id": "x", "amount": 1}).encode(),
            "encoding": Encoding.JSON,
        }
    )
    assert ok is not None
    with pytest.raises(gexc.InvalidArgument):
        schema_client.validate_message(
            request={
                "parent": f"projects/{project}",
                "schema": Schema(type_=Schema.Type.AVRO, definition=AVRO),
                "message": b'{"id": 7}',
                "encoding": Encoding.JSON,
            }
        )
