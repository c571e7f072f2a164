SELECT jpg_proto.publish(2, now(), ARRAY(SELECT gen_random_uuid()::text FROM generate_series(1, 100)),
  array_fill(''::text, ARRAY[100]), array_fill('{"k":"v"}'::jsonb, ARRAY[100]),
  ARRAY(SELECT convert_to(repeat(md5(random()::text), 32), 'UTF8') FROM generate_series(1, 100)));
