BEGIN;
SELECT last_id FROM jpg_proto.topic_heads WHERE topic_id = 2 FOR UPDATE \gset
SELECT array_agg(gen_random_uuid()::text) AS keys FROM generate_series(1, 100) \gset
SELECT key, msg_id FROM jpg_proto.dedup WHERE topic_id = 2 AND key = ANY (:keys::text[]) AND published_at > now() - interval '1 day';
INSERT INTO jpg_proto.messages (topic_id, id, publish_time, ordering_key, attributes, data)
SELECT 2, :last_id + g, now(), '', '{"k":"v"}', convert_to(repeat(md5(random()::text), 32), 'UTF8') FROM generate_series(1, 100) g;
UPDATE jpg_proto.topic_heads SET last_id = :last_id + 100 WHERE topic_id = 2;
INSERT INTO jpg_proto.dedup SELECT 2, k, :last_id + o, now() FROM unnest(:keys::text[]) WITH ORDINALITY u(k, o)
ON CONFLICT (topic_id, key) DO UPDATE SET msg_id = excluded.msg_id, published_at = excluded.published_at;
COMMIT;
