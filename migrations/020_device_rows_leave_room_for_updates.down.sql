-- Back to pages packed full; pages written meanwhile keep their free space until rewritten.
ALTER TABLE devices RESET (fillfactor);
