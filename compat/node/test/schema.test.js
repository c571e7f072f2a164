'use strict';
const assert = require('node:assert/strict');
const {describe} = require('node:test');
const {SchemaTypes, Encodings} = require('@google-cloud/pubsub');
const {pubsub, scenario, pullUntil} = require('../lib/helpers');

const AVRO = JSON.stringify({
  type: 'record',
  name: 'Order',
  fields: [
    {name: 'id', type: 'string'},
    {name: 'amount', type: 'int'},
  ],
});

async function schemaTopic(res) {
  const schema = await pubsub.createSchema(res.schemaId(), SchemaTypes.Avro, AVRO);
  const [topic] = await pubsub.createTopic({
    name: res.topicId(),
    schemaSettings: {schema: await schema.getName(), encoding: Encodings.Json},
  });
  return {schema, topic};
}

describe('schema', () => {
  scenario('schema accepts valid message', async res => {
    const {topic} = await schemaTopic(res);
    const sub = await res.subscription(topic);
    await topic.publishMessage({json: {id: 'o-1', amount: 42}});
    const [got] = await pullUntil(sub, 1);
    assert.deepEqual(JSON.parse(got.message.data.toString()), {id: 'o-1', amount: 42});
  });

  scenario('schema rejects invalid message', async res => {
    const {topic} = await schemaTopic(res);
    await assert.rejects(topic.publishMessage({json: {id: 'o-2', amount: 'lots'}}), err => {
      assert.equal(err.code, 3, err.message);
      return true;
    });
  });

  scenario('validate message against schema', async res => {
    const schema = await pubsub.createSchema(res.schemaId(), SchemaTypes.Avro, AVRO);
    // The field is bytes: a string would be read as base64, so pass a Buffer.
    await schema.validateMessage(Buffer.from(JSON.stringify({id: 'x', amount: 1})), Encodings.Json);
    await assert.rejects(schema.validateMessage(Buffer.from('{"id": 7}'), Encodings.Json), err => {
      assert.equal(err.code, 3, err.message);
      return true;
    });
  });
});
