'use strict';
const assert = require('node:assert/strict');
const {describe} = require('node:test');
const {Duration} = require('@google-cloud/pubsub');
const {pubsub, scenario, collect, pullOnce, pullUntil} = require('../lib/helpers');

const ackAll = message => message.ack();
const seconds = s => Duration.from({seconds: s});

describe('streaming', () => {
  scenario('subscribe and ack', async res => {
    const topic = await res.topic();
    const created = await res.subscription(topic);
    const payloads = Array.from({length: 20}, (_, i) => `s-${i}`);
    await Promise.all(payloads.map(p => topic.publishMessage({data: Buffer.from(p), attributes: {n: '1'}})));
    const c = collect(res, pubsub.subscription(created.name), ackAll);
    await c.wait(() => c.distinct() === 20, 30_000, '20 messages on the stream');
    assert.deepEqual([...c.perData.keys()].sort(), [...payloads].sort());
    assert.ok(c.deliveries.every(d => d.message.attributes.n === '1'));
    await c.stop();
    assert.deepEqual(await pullOnce(created, 10, 2000), [], 'acked on the stream: nothing left');
  });

  scenario('nack redelivers', async res => {
    const topic = await res.topic();
    const created = await res.subscription(topic);
    await topic.publishMessage({data: Buffer.from('nack-me')});
    const c = collect(res, pubsub.subscription(created.name), (m, seen) => (seen === 1 ? m.nack() : m.ack()));
    await c.wait(() => c.count('nack-me') >= 2, 30_000, 'redelivery after nack');
    const [first, second] = c.deliveries;
    assert.equal(first.message.id, second.message.id);
    assert.notEqual(first.message.ackId, second.message.ackId, 'a redelivery is a new lease');
  });

  scenario('unary ack deadline expiry redelivers', async res => {
    const topic = await res.topic();
    const sub = await res.subscription(topic, {ackDeadlineSeconds: 10});
    await topic.publishMessage({data: Buffer.from('expire')});
    const [first] = await pullUntil(sub, 1, {ack: false});
    const leasedAt = Date.now();
    assert.deepEqual(await pullOnce(sub, 10, 2000), [], 'the lease holds');
    const [again] = await pullUntil(sub, 1, {timeoutMs: 25_000});
    const waited = (Date.now() - leasedAt) / 1000;
    assert.equal(again.message.messageId, first.message.messageId);
    assert.ok(waited >= 8, `redelivered after ${waited}s, before the 10 s deadline`);
  });

  scenario('lease extension holds message past deadline', async res => {
    const topic = await res.topic();
    const created = await res.subscription(topic, {ackDeadlineSeconds: 10});
    await topic.publishMessage({data: Buffer.from('held')});
    const held = [];
    const sub = pubsub.subscription(created.name, {minAckDeadline: seconds(10), maxAckDeadline: seconds(10)});
    const c = collect(res, sub, m => {
      held.push(m);
    });
    await c.wait(() => c.count('held') >= 1, 30_000, 'the first delivery');
    const firstAt = c.deliveries[0].at;
    await c.wait(() => Date.now() - firstAt >= 14_000 || c.count('held') > 1, 30_000, '14 s held');
    assert.equal(c.count('held'), 1, 'redelivered while the client was extending its lease');
    held[0].ack();
  });

  scenario('max extension time lets message expire', async res => {
    const topic = await res.topic();
    const created = await res.subscription(topic, {ackDeadlineSeconds: 10});
    await topic.publishMessage({data: Buffer.from('dropped-lease')});
    const sub = pubsub.subscription(created.name, {
      minAckDeadline: seconds(10),
      maxAckDeadline: seconds(10),
      maxExtensionTime: seconds(2),
    });
    const c = collect(res, sub, (m, seen) => {
      if (seen > 1) m.ack();
    });
    await c.wait(() => c.count('dropped-lease') >= 2, 40_000, 'redelivery after the lease ran out');
    const [first, second] = c.deliveries;
    assert.equal(first.message.id, second.message.id);
    assert.ok(second.at - first.at >= 5000, 'redelivered long before any deadline could pass');
  });
});
