BEGIN;
SELECT last_id FROM jpg_proto.topic_heads WHERE topic_id = 1 FOR UPDATE \gset
INSERT INTO jpg_proto.messages (topic_id, id, publish_time, ordering_key, attributes, data)
SELECT 1, :last_id + g, now(), '', '{"k":"v"}', convert_to(repeat(md5(random()::text), 32), 'UTF8') FROM generate_series(1, 100) g;
UPDATE jpg_proto.topic_heads SET last_id = :last_id + 100 WHERE topic_id = 1;
COMMIT;
