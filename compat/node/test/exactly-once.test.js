'use strict';
const assert = require('node:assert/strict');
const {describe} = require('node:test');
const {AckResponses} = require('@google-cloud/pubsub');
const {pubsub, scenario, collect} = require('../lib/helpers');

describe('exactly-once', () => {
  scenario('ackWithResponse succeeds', async res => {
    const topic = await res.topic();
    const created = await res.subscription(topic, {enableExactlyOnceDelivery: true});
    for (let i = 0; i < 5; i++) await topic.publishMessage({data: Buffer.from(`eod-${i}`)});
    const results = new Map();
    const c = collect(res, pubsub.subscription(created.name), async m => {
      try {
        results.set(m.data.toString(), await m.ackWithResponse());
      } catch (err) {
        results.set(m.data.toString(), `${err.errorCode || err.code}: ${err.message}`);
      }
    });
    await c.wait(() => results.size === 5, 40_000, 'five ack results');
    assert.deepEqual([...new Set(results.values())], [AckResponses.Success], JSON.stringify([...results]));
    assert.ok(c.deliveries.length === 5, 'exactly-once: no redelivery');
  });

  scenario('nackWithResponse then redelivery', async res => {
    const topic = await res.topic();
    const created = await res.subscription(topic, {enableExactlyOnceDelivery: true});
    await topic.publishMessage({data: Buffer.from('eod-nack')});
    const outcome = {};
    const c = collect(res, pubsub.subscription(created.name), async (m, seen) => {
      if (seen === 1) outcome.nack = await m.nackWithResponse();
      else outcome.ack = await m.ackWithResponse();
    });
    await c.wait(() => 'ack' in outcome, 40_000, 'the redelivery acked');
    assert.equal(outcome.nack, AckResponses.Success);
    assert.equal(outcome.ack, AckResponses.Success);
  });
});
