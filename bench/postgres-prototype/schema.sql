DROP SCHEMA IF EXISTS jpg_proto CASCADE;
CREATE SCHEMA jpg_proto;
SET search_path = jpg_proto;
CREATE TABLE topics (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  name text COLLATE "C" NOT NULL,
  deleted boolean NOT NULL DEFAULT false,
  dedup_window interval NOT NULL DEFAULT '1 day');
CREATE UNIQUE INDEX topics_live_name ON topics (name) WHERE NOT deleted;
CREATE TABLE topic_heads (topic_id bigint PRIMARY KEY REFERENCES topics, last_id bigint NOT NULL DEFAULT 0);
CREATE TABLE messages (
  topic_id bigint NOT NULL, id bigint NOT NULL, publish_time timestamptz NOT NULL,
  ordering_key text NOT NULL DEFAULT '', attributes jsonb NOT NULL DEFAULT '{}', data bytea NOT NULL,
  PRIMARY KEY (topic_id, id));
CREATE TABLE dedup (topic_id bigint NOT NULL, key text NOT NULL, msg_id bigint NOT NULL,
  published_at timestamptz NOT NULL, PRIMARY KEY (topic_id, key));
CREATE INDEX dedup_age ON dedup (published_at);
CREATE TABLE sub_cursors (sub_id bigint PRIMARY KEY, topic_id bigint NOT NULL, cursor bigint NOT NULL);
CREATE TABLE deliveries (
  sub_id bigint NOT NULL, msg_id bigint NOT NULL, ordering_key text NOT NULL DEFAULT '',
  publish_time timestamptz NOT NULL, state smallint NOT NULL, due_at timestamptz NOT NULL,
  attempts integer NOT NULL DEFAULT 0, first_attempt timestamptz, lease bigint,
  PRIMARY KEY (sub_id, msg_id));
CREATE INDEX deliveries_waiting ON deliveries (sub_id, due_at, msg_id) WHERE state = 0;
CREATE INDEX deliveries_leased ON deliveries (due_at) WHERE state = 1;
CREATE INDEX deliveries_keys ON deliveries (sub_id, ordering_key, msg_id) WHERE ordering_key <> '';
CREATE SEQUENCE lease_seq CACHE 1000;

-- One round trip per publish batch; the topic_heads row lock is held until commit, so a topic's
-- ids become visible in id order.
CREATE FUNCTION publish(p_topic bigint, p_now timestamptz, p_keys text[], p_okeys text[],
                        p_attrs jsonb[], p_data bytea[]) RETURNS bigint[] LANGUAGE plpgsql
SET search_path = jpg_proto AS $$
DECLARE v_last bigint; v_window interval; v_n int; v_out bigint[];
BEGIN
  SELECT h.last_id, t.dedup_window INTO v_last, v_window
    FROM topic_heads h JOIN topics t ON t.id = h.topic_id
   WHERE h.topic_id = p_topic AND NOT t.deleted FOR UPDATE OF h;
  IF NOT FOUND THEN RAISE EXCEPTION 'topic % not found', p_topic USING ERRCODE = 'P0002'; END IF;
  CREATE TEMP TABLE IF NOT EXISTS pub_in (i int, k text, first_i int, old_id bigint, new_id bigint) ON COMMIT DELETE ROWS;
  DELETE FROM pub_in;
  INSERT INTO pub_in (i, k, first_i, old_id)
  SELECT u.i, u.k, min(u.i) OVER (PARTITION BY coalesce(u.k, u.i::text)), d.msg_id
    FROM unnest(p_keys) WITH ORDINALITY AS u(k, i)
    LEFT JOIN dedup d ON d.topic_id = p_topic AND d.key = u.k AND d.published_at > p_now - v_window;
  UPDATE pub_in p SET new_id = v_last + r.rn
    FROM (SELECT i, row_number() OVER (ORDER BY i) AS rn FROM pub_in WHERE old_id IS NULL AND i = first_i) r
   WHERE p.i = r.i;
  SELECT count(new_id) INTO v_n FROM pub_in;
  SELECT array_agg(coalesce(p.old_id, f.new_id) ORDER BY p.i) INTO v_out
    FROM pub_in p JOIN pub_in f ON f.i = p.first_i;
  IF v_n > 0 THEN
    UPDATE topic_heads SET last_id = v_last + v_n WHERE topic_id = p_topic;
    INSERT INTO messages (topic_id, id, publish_time, ordering_key, attributes, data)
    SELECT p_topic, p.new_id, p_now, p_okeys[p.i], p_attrs[p.i], p_data[p.i] FROM pub_in p WHERE p.new_id IS NOT NULL;
    INSERT INTO dedup (topic_id, key, msg_id, published_at)
    SELECT p_topic, p.k, p.new_id, p_now FROM pub_in p WHERE p.new_id IS NOT NULL AND p.k IS NOT NULL
    ON CONFLICT (topic_id, key) DO UPDATE SET msg_id = excluded.msg_id, published_at = excluded.published_at;
  END IF;
  RETURN v_out;
END $$;

INSERT INTO topics (name) VALUES ('projects/p/topics/bench'), ('projects/p/topics/keyed');
INSERT INTO topic_heads (topic_id) SELECT id FROM topics;
INSERT INTO sub_cursors VALUES (1, 1, 0), (2, 1, 0);
