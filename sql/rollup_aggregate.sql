-- The same aggregate for the rollup, out of the user's schema: a function another role
-- creates there (an ohlcv with one more argument and a default) would make the rollup's
-- call of the public one ambiguous, and stop every rollup.
CREATE OR REPLACE AGGREGATE tradebars_internal.ohlcv(bigint, bigint, integer, bigint, bigint) (
    SFUNC = tradebars_internal.ohlcv_trans,
    STYPE = internal,
    SSPACE = 144,
    FINALFUNC = tradebars_internal.ohlcv_final,
    COMBINEFUNC = tradebars_internal.ohlcv_combine,
    SERIALFUNC = tradebars_internal.ohlcv_serialize,
    DESERIALFUNC = tradebars_internal.ohlcv_deserialize,
    PARALLEL = SAFE
);
