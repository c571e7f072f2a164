'use strict';
// Shared plumbing for the Node.js scenarios: the target from the environment, uniquely named
// resources cleaned up after each test, and bounded waits that fail fast when a stream dies.

const crypto = require('node:crypto');
const {test} = require('node:test');
const {PubSub, v1} = require('@google-cloud/pubsub');

const HOST = process.env.PUBSUB_EMULATOR_HOST;
const PROJECT = process.env.PUBSUB_PROJECT_ID || 'compat-project';
if (!HOST) {
  throw new Error('set PUBSUB_EMULATOR_HOST=host:port to the broker under test');
}

/** Every scenario is bounded: its own waits, and this per-test backstop. */
const TEST_TIMEOUT_MS = 120_000;

/** One client for the whole file, as an application would hold one. */
const pubsub = new PubSub({projectId: PROJECT});

let rawClients;
/**
 * The generated clients with the same connection settings as `pubsub` (insecure channel to the
 * emulator host, no size limit on received messages): for unary calls the handwritten client
 * does not expose, such as Pull.
 */
async function raw() {
  if (!rawClients) {
    const opts = await pubsub.getClientConfig();
    rawClients = {
      subscriber: new v1.SubscriberClient(opts),
      publisher: new v1.PublisherClient(opts),
    };
  }
  return rawClients;
}

/** Unique resource ids per test, remembered for cleanup. */
class Resources {
  constructor(label) {
    this.label = label.toLowerCase().replace(/[^a-z0-9]+/g, '-').slice(0, 40);
    this.topics = [];
    this.subs = [];
    this.snapshots = [];
    this.schemas = [];
    this.subscribers = [];
  }

  id(kind) {
    return `n-${this.label}-${kind}-${crypto.randomBytes(4).toString('hex')}`;
  }

  topicId() {
    const id = this.id('t');
    this.topics.push(id);
    return id;
  }

  subId() {
    const id = this.id('s');
    this.subs.push(id);
    return id;
  }

  snapshotId() {
    const id = this.id('snap');
    this.snapshots.push(id);
    return id;
  }

  schemaId() {
    const id = this.id('schema');
    this.schemas.push(id);
    return id;
  }

  /** Creates a topic (options go to CreateTopic) and returns the Topic. */
  async topic(options = {}) {
    const [topic] = await pubsub.createTopic({name: this.topicId(), ...options});
    return topic;
  }

  /** Creates a subscription on `topic` with the given options and returns it. */
  async subscription(topic, options = {}) {
    const [sub] = await topic.createSubscription(this.subId(), options);
    return sub;
  }

  async cleanup() {
    const quietly = p => p.catch(() => undefined);
    for (const c of this.subscribers) await quietly(c.stop());
    for (const s of this.snapshots) await quietly(pubsub.snapshot(s).delete());
    for (const s of this.subs) await quietly(pubsub.subscription(s).delete());
    for (const t of this.topics) await quietly(pubsub.topic(t).delete());
    for (const s of this.schemas) await quietly(pubsub.schema(s).delete());
  }
}

/** Declares a scenario with its own Resources, always cleaned up. */
function scenario(name, fn, options = {}) {
  test(name, {timeout: TEST_TIMEOUT_MS, ...options}, async t => {
    const res = new Resources(name);
    try {
      await fn(res, t);
    } finally {
      await res.cleanup();
    }
  });
}

const sleep = ms => new Promise(resolve => setTimeout(resolve, ms));

/** Polls `predicate` every 50 ms until true, or fails after `timeoutMs` naming `what`. */
async function waitFor(predicate, timeoutMs, what, check = () => {}) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    check(what);
    if (await predicate()) return;
    if (Date.now() >= deadline) {
      throw new Error(`timed out after ${Math.round(timeoutMs / 1000)}s waiting for ${what}`);
    }
    await sleep(50);
  }
}

/**
 * A streaming subscriber (`subscription.on('message')`) that records every delivery. The
 * handler decides what to do with each message; a stream error (for example UNIMPLEMENTED)
 * makes every wait fail at once.
 */
class Collector {
  constructor(subscription, handler) {
    this.subscription = subscription;
    this.deliveries = [];
    this.perData = new Map();
    this.error = undefined;
    this.handlerErrors = [];
    subscription.on('error', err => {
      this.error = this.error || err;
    });
    subscription.on('message', message => {
      const key = message.data.toString('latin1');
      const seen = (this.perData.get(key) || 0) + 1;
      this.perData.set(key, seen);
      this.deliveries.push({message, at: Date.now()});
      Promise.resolve()
        .then(() => handler(message, seen))
        .catch(err => this.handlerErrors.push(err));
    });
  }

  count(data) {
    return this.perData.get(data) || 0;
  }

  distinct() {
    return this.perData.size;
  }

  check(what = 'messages') {
    if (this.handlerErrors.length) throw this.handlerErrors[0];
    if (this.error) {
      throw new Error(`streaming pull failed while waiting for ${what}: ${this.error.message}`);
    }
  }

  wait(predicate, timeoutMs, what) {
    return waitFor(predicate, timeoutMs, what, w => this.check(w));
  }

  async stop() {
    this.subscription.removeAllListeners('message');
    await this.subscription.close().catch(() => undefined);
    this.subscription.removeAllListeners('error');
  }
}

/** Opens a streaming subscriber on `subscription`, stopped at the end of the scenario. */
function collect(res, subscription, handler) {
  const c = new Collector(subscription, handler);
  res.subscribers.push(c);
  return c;
}

/** One unary Pull bounded by `waitMs`; nothing to return within it gives []. */
async function pullOnce(subscription, maxMessages = 100, waitMs = 3000) {
  const {subscriber} = await raw();
  try {
    const [resp] = await subscriber.pull(
      {subscription: subscription.name, maxMessages},
      {timeout: waitMs, maxRetries: 0},
    );
    return resp.receivedMessages || [];
  } catch (err) {
    if (err.code === 4) return []; // DEADLINE_EXCEEDED: the long poll found nothing
    throw err;
  }
}

/** Pulls (and acks, unless told not to) until `want` messages arrived, bounded by `timeoutMs`. */
async function pullUntil(subscription, want, {timeoutMs = 20_000, ack = true, alongside} = {}) {
  const {subscriber} = await raw();
  const got = [];
  const deadline = Date.now() + timeoutMs;
  while (got.length < want) {
    if (alongside) alongside.check(`${want} messages on ${subscription.name}`);
    const remaining = deadline - Date.now();
    if (remaining <= 0) {
      throw new Error(`pulled ${got.length} of ${want} messages from ${subscription.name}`);
    }
    const batch = await pullOnce(subscription, Math.min(1000, want - got.length), Math.min(3000, remaining));
    if (batch.length && ack) {
      await subscriber.acknowledge({subscription: subscription.name, ackIds: batch.map(m => m.ackId)});
    }
    got.push(...batch);
  }
  return got;
}

module.exports = {PROJECT, pubsub, raw, scenario, waitFor, collect, pullOnce, pullUntil, sleep};
