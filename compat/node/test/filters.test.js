'use strict';
const assert = require('node:assert/strict');
const {describe} = require('node:test');
const {scenario, pullOnce, pullUntil} = require('../lib/helpers');

describe('filters', () => {
  scenario('filter delivers only matching', async res => {
    const topic = await res.topic();
    const sub = await res.subscription(topic, {filter: 'attributes.kind = "paid" AND NOT attributes:test'});
    await Promise.all([
      topic.publishMessage({data: Buffer.from('paid-1'), attributes: {kind: 'paid'}}),
      topic.publishMessage({data: Buffer.from('free-1'), attributes: {kind: 'free'}}),
      topic.publishMessage({data: Buffer.from('paid-test'), attributes: {kind: 'paid', test: '1'}}),
      topic.publishMessage({data: Buffer.from('none')}),
      topic.publishMessage({data: Buffer.from('paid-2'), attributes: {kind: 'paid'}}),
    ]);
    const got = await pullUntil(sub, 2);
    assert.deepEqual(got.map(m => m.message.data.toString()).sort(), ['paid-1', 'paid-2']);
    assert.deepEqual(await pullOnce(sub, 10, 2000), [], 'non-matching messages are never delivered');
  });

  scenario('filter hasPrefix', async res => {
    const topic = await res.topic();
    const sub = await res.subscription(topic, {filter: 'hasPrefix(attributes.region, "eu-")'});
    for (const [data, region] of [['a', 'eu-west'], ['b', 'us-east'], ['c', 'eu-north']]) {
      await topic.publishMessage({data: Buffer.from(data), attributes: {region}});
    }
    const got = await pullUntil(sub, 2);
    assert.deepEqual(got.map(m => m.message.data.toString()).sort(), ['a', 'c']);
    assert.deepEqual(await pullOnce(sub, 10, 2000), []);
  });

  scenario('invalid filter is INVALID_ARGUMENT', async res => {
    const topic = await res.topic();
    await assert.rejects(topic.createSubscription(res.subId(), {filter: 'attributes.kind = = broken'}), err => {
      assert.equal(err.code, 3, err.message);
      return true;
    });
  });
});
