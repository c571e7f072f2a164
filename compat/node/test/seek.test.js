'use strict';
const assert = require('node:assert/strict');
const {describe} = require('node:test');
const {scenario, pullOnce, pullUntil} = require('../lib/helpers');

describe('seek', () => {
  scenario('seek to time replays acked', async res => {
    const topic = await res.topic();
    const sub = await res.subscription(topic, {retainAckedMessages: true});
    const before = new Date(Date.now() - 5000);
    for (let i = 0; i < 3; i++) await topic.publishMessage({data: Buffer.from(`t-${i}`)});
    await pullUntil(sub, 3);
    assert.deepEqual(await pullOnce(sub, 10, 1000), []);
    await sub.seek(before);
    const again = await pullUntil(sub, 3);
    assert.deepEqual(again.map(m => m.message.data.toString()).sort(), ['t-0', 't-1', 't-2']);
  });

  scenario('seek to snapshot', async res => {
    const topic = await res.topic();
    const sub = await res.subscription(topic);
    await topic.publishMessage({data: Buffer.from('before')});
    await pullUntil(sub, 1);
    const [snapshot] = await sub.createSnapshot(res.snapshotId());
    for (const d of ['after-1', 'after-2']) await topic.publishMessage({data: Buffer.from(d)});
    await pullUntil(sub, 2);
    await sub.seek(snapshot.name);
    const again = await pullUntil(sub, 2);
    assert.deepEqual(again.map(m => m.message.data.toString()).sort(), ['after-1', 'after-2']);
    assert.deepEqual(await pullOnce(sub, 10, 1000), [], 'acked before the snapshot stays acked');
  });
});
