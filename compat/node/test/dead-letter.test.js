'use strict';
const assert = require('node:assert/strict');
const {describe} = require('node:test');
const {pubsub, raw, scenario, collect, pullUntil} = require('../lib/helpers');

async function deadLetterSetup(res) {
  const topic = await res.topic();
  const deadTopic = await res.topic();
  const deadSub = await res.subscription(deadTopic);
  const source = await res.subscription(topic, {
    deadLetterPolicy: {deadLetterTopic: deadTopic.name, maxDeliveryAttempts: 5},
  });
  return {topic, source, deadSub};
}

describe('dead-letter', () => {
  scenario('dead letter after max attempts', async res => {
    const {topic, source, deadSub} = await deadLetterSetup(res);
    await topic.publishMessage({data: Buffer.from('poison'), attributes: {origin: 'test'}});
    const c = collect(res, pubsub.subscription(source.name), m => m.nack());
    await c.wait(() => c.count('poison') >= 5, 60_000, 'five delivery attempts');
    const [dead] = await pullUntil(deadSub, 1, {timeoutMs: 30_000, alongside: c});
    const attempts = c.deliveries.map(d => d.message.deliveryAttempt);
    assert.deepEqual(attempts.slice(0, 5), [1, 2, 3, 4, 5], `deliveryAttempt seen: ${attempts}`);
    assert.equal(dead.message.data.toString(), 'poison');
    assert.equal(dead.message.attributes.origin, 'test');
  });

  scenario('dead letter source attributes', async res => {
    const {topic, source, deadSub} = await deadLetterSetup(res);
    await topic.publishMessage({data: Buffer.from('poison')});
    const c = collect(res, pubsub.subscription(source.name), m => m.nack());
    const [dead] = await pullUntil(deadSub, 1, {timeoutMs: 60_000, alongside: c});
    const attrs = {...dead.message.attributes};
    assert.equal(attrs.CloudPubSubDeadLetterSourceSubscription, source.name.split('/').pop(), JSON.stringify(attrs));
    assert.ok('CloudPubSubDeadLetterSourceDeliveryCount' in attrs, JSON.stringify(attrs));
  });

  scenario('no dead letter policy means no delivery attempt', async res => {
    const topic = await res.topic();
    const sub = await res.subscription(topic);
    await topic.publishMessage({data: Buffer.from('plain')});
    const [got] = await pullUntil(sub, 1);
    assert.equal(got.deliveryAttempt, 0);
  });

  scenario('dead letter without pulling source again', async res => {
    // After the 5th nack the message moves on its own; nobody pulls the source again.
    const {topic, source, deadSub} = await deadLetterSetup(res);
    await topic.publishMessage({data: Buffer.from('poison')});
    const {subscriber} = await raw();
    for (let attempt = 1; attempt <= 5; attempt++) {
      const [got] = await pullUntil(source, 1, {ack: false});
      assert.equal(got.deliveryAttempt, attempt);
      await subscriber.modifyAckDeadline({subscription: source.name, ackIds: [got.ackId], ackDeadlineSeconds: 0});
    }
    const [dead] = await pullUntil(deadSub, 1, {timeoutMs: 15_000});
    assert.equal(dead.message.data.toString(), 'poison');
  });
});
