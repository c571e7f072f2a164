'use strict';
const assert = require('node:assert/strict');
const {describe} = require('node:test');
const {pubsub, raw, scenario, pullUntil} = require('../lib/helpers');

describe('publish', () => {
  scenario('batched publish with attributes', async res => {
    const created = await res.topic();
    const sub = await res.subscription(created);
    // Small batches with a short latency: 25 messages go out as several Publish calls.
    const topic = pubsub.topic(created.name, {batching: {maxMessages: 10, maxMilliseconds: 50}});
    const ids = await Promise.all(
      Array.from({length: 25}, (_, i) =>
        topic.publishMessage({
          data: Buffer.from(`m-${i}`),
          attributes: {index: String(i), kind: i % 2 === 0 ? 'even' : 'odd'},
        }),
      ),
    );
    assert.equal(new Set(ids).size, 25);
    const got = await pullUntil(sub, 25);
    const byData = new Map(got.map(m => [m.message.data.toString(), m.message]));
    for (let i = 0; i < 25; i++) {
      const msg = byData.get(`m-${i}`);
      assert.ok(msg, `m-${i} missing`);
      assert.deepEqual({...msg.attributes}, {index: String(i), kind: i % 2 === 0 ? 'even' : 'odd'});
      assert.ok(ids.includes(msg.messageId));
      assert.ok(msg.publishTime);
    }
  });

  scenario('attributes-only message', async res => {
    const topic = await res.topic();
    const sub = await res.subscription(topic);
    await topic.publishMessage({attributes: {only: 'attributes'}});
    const [got] = await pullUntil(sub, 1);
    assert.equal(got.message.data.length, 0);
    assert.deepEqual({...got.message.attributes}, {only: 'attributes'});
  });

  scenario('message ids come back in request order', async res => {
    const topic = await res.topic();
    const sub = await res.subscription(topic);
    const {publisher} = await raw();
    const [resp] = await publisher.publish({
      topic: topic.name,
      messages: Array.from({length: 5}, (_, i) => ({data: Buffer.from(`x${i}`)})),
    });
    assert.equal(resp.messageIds.length, 5);
    const got = await pullUntil(sub, 5);
    const idOf = new Map(got.map(m => [m.message.data.toString(), m.message.messageId]));
    assert.deepEqual(
      Array.from({length: 5}, (_, i) => idOf.get(`x${i}`)),
      resp.messageIds,
    );
  });
});
