'use strict';
const assert = require('node:assert/strict');
const {describe} = require('node:test');
const {PROJECT, pubsub, raw, scenario, pullUntil} = require('../lib/helpers');

const NOT_FOUND = 5;
const ALREADY_EXISTS = 6;
const INVALID_ARGUMENT = 3;

/** Asserts that `promise` rejects with the gRPC status `code`. */
async function rejectsWith(promise, code) {
  await assert.rejects(promise, err => {
    assert.equal(err.code, code, `expected gRPC code ${code}, got ${err.code}: ${err.message}`);
    return true;
  });
}

describe('errors', () => {
  scenario('get missing topic is NOT_FOUND', async res => {
    await rejectsWith(pubsub.topic(res.topicId()).getMetadata(), NOT_FOUND);
  });

  scenario('publish to missing topic is NOT_FOUND', async res => {
    await rejectsWith(pubsub.topic(res.topicId()).publishMessage({data: Buffer.from('lost')}), NOT_FOUND);
  });

  scenario('subscription on missing topic is NOT_FOUND', async res => {
    await rejectsWith(pubsub.topic(res.topicId()).createSubscription(res.subId()), NOT_FOUND);
  });

  scenario('pull from missing subscription is NOT_FOUND', async res => {
    const {subscriber} = await raw();
    await rejectsWith(
      subscriber.pull(
        {subscription: `projects/${PROJECT}/subscriptions/${res.subId()}`, maxMessages: 1},
        {maxRetries: 0, timeout: 10_000},
      ),
      NOT_FOUND,
    );
  });

  scenario('duplicate topic is ALREADY_EXISTS', async res => {
    const topic = await res.topic();
    await rejectsWith(pubsub.createTopic(topic.name), ALREADY_EXISTS);
  });

  scenario('duplicate subscription is ALREADY_EXISTS', async res => {
    const topic = await res.topic();
    const sub = await res.subscription(topic);
    await rejectsWith(topic.createSubscription(sub.name), ALREADY_EXISTS);
  });

  for (const bad of ['1starts-with-digit', 'goog-reserved', 'ab', 'has space', 'x'.repeat(256)]) {
    scenario(`bad topic name ${bad.slice(0, 20)} is INVALID_ARGUMENT`, async () => {
      const {publisher} = await raw();
      await rejectsWith(publisher.createTopic({name: `projects/${PROJECT}/topics/${bad}`}), INVALID_ARGUMENT);
    });
  }

  scenario('ack deadline 601 is INVALID_ARGUMENT', async res => {
    const topic = await res.topic();
    await rejectsWith(topic.createSubscription(res.subId(), {ackDeadlineSeconds: 601}), INVALID_ARGUMENT);
  });

  scenario('ack deadline 5 is INVALID_ARGUMENT', async res => {
    const topic = await res.topic();
    await rejectsWith(topic.createSubscription(res.subId(), {ackDeadlineSeconds: 5}), INVALID_ARGUMENT);
  });

  scenario('modify ack deadline 700 is INVALID_ARGUMENT', async res => {
    const topic = await res.topic();
    const sub = await res.subscription(topic);
    await topic.publishMessage({data: Buffer.from('m')});
    const [got] = await pullUntil(sub, 1, {ack: false});
    const {subscriber} = await raw();
    await rejectsWith(
      subscriber.modifyAckDeadline({subscription: sub.name, ackIds: [got.ackId], ackDeadlineSeconds: 700}),
      INVALID_ARGUMENT,
    );
  });

  scenario('empty message is INVALID_ARGUMENT', async res => {
    const topic = await res.topic();
    const {publisher} = await raw();
    await rejectsWith(publisher.publish({topic: topic.name, messages: [{data: Buffer.alloc(0)}]}), INVALID_ARGUMENT);
  });

  scenario('detached subscription pull is FAILED_PRECONDITION', async res => {
    const topic = await res.topic();
    const sub = await res.subscription(topic);
    await pubsub.detachSubscription(sub.name);
    const [meta] = await sub.getMetadata();
    assert.equal(meta.detached, true);
    const {subscriber} = await raw();
    await rejectsWith(
      subscriber.pull({subscription: sub.name, maxMessages: 1}, {maxRetries: 0, timeout: 10_000}),
      9,
    );
  });
});
