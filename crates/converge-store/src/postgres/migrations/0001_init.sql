-- Migration 1: the schema of docs/postgres-store.md §2. Runs inside one transaction, with
-- search_path set to the store's schema, so every name below lands in that schema.

CREATE TABLE topics (
  id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  name            text COLLATE "C" NOT NULL,
  deleted         boolean NOT NULL DEFAULT false,
  retention_ms    bigint,
  dedup_window_ms bigint NOT NULL,
  settings        bytea NOT NULL,
  version         bigint NOT NULL DEFAULT 1);
CREATE UNIQUE INDEX topics_live_name ON topics (name) WHERE NOT deleted;

CREATE TABLE topic_heads (
  topic_id bigint PRIMARY KEY REFERENCES topics,
  last_id  bigint NOT NULL DEFAULT 0);

CREATE TABLE messages (
  topic_id     bigint NOT NULL,
  id           bigint NOT NULL,
  publish_time timestamptz NOT NULL,
  ordering_key text NOT NULL DEFAULT '',
  attributes   jsonb NOT NULL DEFAULT '{}',
  data         bytea NOT NULL,
  PRIMARY KEY (topic_id, id));

CREATE TABLE dedup (
  topic_id     bigint NOT NULL,
  key          text NOT NULL,
  msg_id       bigint NOT NULL,
  published_at timestamptz NOT NULL,
  PRIMARY KEY (topic_id, key));
CREATE INDEX dedup_age ON dedup (published_at);

CREATE TABLE subscriptions (
  id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  name          text COLLATE "C" NOT NULL UNIQUE,
  topic_id      bigint,
  start_after   bigint NOT NULL,
  detached      boolean NOT NULL DEFAULT false,
  push          boolean NOT NULL DEFAULT false,
  settings      bytea NOT NULL,
  last_activity timestamptz NOT NULL,
  version       bigint NOT NULL DEFAULT 1);
CREATE INDEX subscriptions_topic ON subscriptions (topic_id);

CREATE TABLE sub_cursors (
  sub_id bigint PRIMARY KEY REFERENCES subscriptions ON DELETE CASCADE,
  cursor bigint NOT NULL);

CREATE TABLE deliveries (
  sub_id        bigint NOT NULL REFERENCES subscriptions ON DELETE CASCADE,
  msg_id        bigint NOT NULL,
  ordering_key  text NOT NULL DEFAULT '',
  publish_time  timestamptz NOT NULL,
  state         smallint NOT NULL,
  due_at        timestamptz NOT NULL,
  attempts      int NOT NULL DEFAULT 0,
  first_attempt timestamptz,
  lease         bigint,
  PRIMARY KEY (sub_id, msg_id));
CREATE INDEX deliveries_waiting ON deliveries (sub_id, due_at, msg_id) WHERE state = 0;
CREATE INDEX deliveries_leased  ON deliveries (due_at) WHERE state = 1;
CREATE INDEX deliveries_keys    ON deliveries (sub_id, ordering_key, msg_id) WHERE ordering_key <> '';
CREATE SEQUENCE lease_seq CACHE 1000;

CREATE TABLE snapshots (
  name        text COLLATE "C" PRIMARY KEY,
  topic_id    bigint NOT NULL REFERENCES topics,
  cursor      bigint NOT NULL,
  undone      bigint[] NOT NULL,
  floor       bigint NOT NULL,
  expire_time timestamptz NOT NULL,
  settings    bytea NOT NULL);
CREATE INDEX snapshots_topic ON snapshots (topic_id);

CREATE TABLE documents (
  kind  text NOT NULL,
  key   text COLLATE "C" NOT NULL,
  value bytea NOT NULL,
  PRIMARY KEY (kind, key));
