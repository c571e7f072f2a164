'use strict';
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const {describe} = require('node:test');
const {pubsub, raw, scenario, collect} = require('../lib/helpers');

const NINE_MB = 9 * 1000 * 1000;

describe('volume', () => {
  scenario('nine megabyte message', async res => {
    const topic = await res.topic();
    const sub = await res.subscription(topic);
    const data = Buffer.alloc(NINE_MB);
    for (let i = 0; i < NINE_MB; i++) data[i] = i % 251;
    await topic.publishMessage({data, attributes: {size: String(NINE_MB)}});
    // gax channels accept any response size, so a unary Pull brings it back whole.
    const {subscriber} = await raw();
    const [resp] = await subscriber.pull({subscription: sub.name, maxMessages: 1}, {timeout: 30_000});
    assert.equal(resp.receivedMessages.length, 1);
    const got = resp.receivedMessages[0];
    assert.equal(got.message.data.length, NINE_MB);
    const digest = b => crypto.createHash('sha256').update(b).digest('hex');
    assert.equal(digest(Buffer.from(got.message.data)), digest(data));
    await subscriber.acknowledge({subscription: sub.name, ackIds: [got.ackId]});
  });

  scenario('ten thousand messages with flow control', async res => {
    const total = 10_000;
    const topic = await res.topic();
    const created = await res.subscription(topic, {ackDeadlineSeconds: 60});
    const sends = [];
    for (let i = 0; i < total; i++) sends.push(topic.publishMessage({data: Buffer.from(String(i))}));
    await Promise.all(sends);
    let outstanding = 0;
    let peak = 0;
    const sub = pubsub.subscription(created.name, {flowControl: {maxMessages: 100, allowExcessMessages: false}});
    const c = collect(res, sub, m => {
      outstanding++;
      peak = Math.max(peak, outstanding);
      // Ack on the next turn, so messages are really held while the client applies flow control.
      setImmediate(() => {
        outstanding--;
        m.ack();
      });
    });
    await c.wait(() => c.distinct() === total, 120_000, `${total} distinct messages`);
    const duplicates = c.deliveries.length - total;
    console.log(`10k: ${c.deliveries.length} deliveries, ${duplicates} duplicates, peak outstanding ${peak}`);
    for (let i = 0; i < total; i++) assert.ok(c.count(String(i)) >= 1, `message ${i} lost`);
    assert.ok(peak <= 100, `flow control let ${peak} messages be outstanding`);
  });
});
