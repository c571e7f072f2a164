SELECT jpg_proto.publish(1, now(), array_fill(NULL::text, ARRAY[100]), array_fill(''::text, ARRAY[100]),
  array_fill('{"k":"v"}'::jsonb, ARRAY[100]),
  ARRAY(SELECT convert_to(repeat(md5(random()::text), 32), 'UTF8') FROM generate_series(1, 100)));
