BEGIN;
SELECT cursor FROM jpg_proto.sub_cursors WHERE sub_id = 2 FOR UPDATE \gset
WITH m AS (
  SELECT id, ordering_key, publish_time FROM jpg_proto.messages
   WHERE topic_id = 1 AND id > :cursor ORDER BY id LIMIT 100),
ins AS (
  INSERT INTO jpg_proto.deliveries
         (sub_id, msg_id, ordering_key, publish_time, state, due_at, attempts, first_attempt, lease)
  SELECT 2, id, ordering_key, publish_time, 1, now() + interval '60 s', 1, now(), nextval('jpg_proto.lease_seq')
    FROM m RETURNING msg_id, lease)
SELECT max(msg_id) AS newcur, array_agg(msg_id) AS ids, array_agg(lease) AS leases FROM ins \gset
UPDATE jpg_proto.sub_cursors SET cursor = :newcur WHERE sub_id = 2;
COMMIT;
SELECT id, publish_time, attributes, data FROM jpg_proto.messages WHERE topic_id = 1 AND id = ANY (:ids::bigint[]);
DELETE FROM jpg_proto.deliveries d USING unnest(:ids::bigint[], :leases::bigint[]) AS a(msg_id, lease)
 WHERE d.sub_id = 2 AND d.msg_id = a.msg_id AND d.lease = a.lease AND d.state = 1;
