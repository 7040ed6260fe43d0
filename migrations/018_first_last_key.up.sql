-- The one definition of how a bucket's first and last values are picked: min(first_last_key(...))[2]
-- is the value with the earliest event time, max(...)[2] the latest. Arrays compare element by
-- element, so the earliest offset from the bucket's start wins, and a device has one sample per
-- metric and instant; as a float8, an offset below 2^32 s (136 years; buckets are at most 366
-- days) keeps every microsecond apart. PostgreSQL 15 would sort each group on its own for
-- array_agg(value ORDER BY ts); min and max of an array need no sort. A plain SQL expression,
-- IMMUTABLE and not STRICT, so the planner inlines it: the plans are those of the written-out
-- expression.
CREATE FUNCTION first_last_key(at TIMESTAMPTZ, bucket TIMESTAMPTZ, value DOUBLE PRECISION)
RETURNS DOUBLE PRECISION[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT ARRAY[date_part('epoch', at - bucket), value] $$;
