WITH c AS (
  SELECT d.msg_id FROM jpg_proto.deliveries d
   WHERE d.sub_id = 1 AND d.state = 0 AND d.due_at <= now()
     AND (d.ordering_key = '' OR NOT EXISTS (
           SELECT 1 FROM jpg_proto.deliveries p
            WHERE p.sub_id = d.sub_id AND p.ordering_key = d.ordering_key AND p.msg_id < d.msg_id))
   ORDER BY d.due_at, d.msg_id LIMIT 100
   FOR UPDATE SKIP LOCKED),
u AS (
  UPDATE jpg_proto.deliveries d
     SET state = 1, lease = nextval('jpg_proto.lease_seq'), attempts = d.attempts + 1,
         first_attempt = coalesce(d.first_attempt, now()), due_at = now() + interval '60 s'
    FROM c WHERE d.sub_id = 1 AND d.msg_id = c.msg_id
  RETURNING d.msg_id, d.lease)
SELECT array_agg(msg_id) AS ids, array_agg(lease) AS leases FROM u \gset
SELECT id, publish_time, attributes, data FROM jpg_proto.messages WHERE topic_id = 1 AND id = ANY (:ids::bigint[]);
DELETE FROM jpg_proto.deliveries d USING unnest(:ids::bigint[], :leases::bigint[]) AS a(msg_id, lease)
 WHERE d.sub_id = 1 AND d.msg_id = a.msg_id AND d.lease = a.lease AND d.state = 1;
