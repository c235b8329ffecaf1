-- The same job as strata.toml, as one DuckDB script: land the CSV as raw text Parquet, clean
-- (types, the two rules, a QUALIFY row_number() dedupe) into Parquet partitioned by ship month,
-- aggregate by day. Run from the directory holding data/ and out/.
SET threads = 2;
SET memory_limit = '1GB';
SET preserve_insertion_order = false;
COPY (SELECT * FROM read_csv('data/lineitem.csv', header = true, all_varchar = true))
  TO 'out/raw.parquet' (FORMAT parquet);
COPY (
  WITH typed AS (
    SELECT TRY_CAST(l_orderkey AS BIGINT) AS l_orderkey, TRY_CAST(l_partkey AS BIGINT) AS l_partkey,
           TRY_CAST(l_suppkey AS BIGINT) AS l_suppkey, TRY_CAST(l_linenumber AS INTEGER) AS l_linenumber,
           TRY_CAST(l_quantity AS DECIMAL(15,2)) AS l_quantity,
           TRY_CAST(l_extendedprice AS DECIMAL(15,2)) AS l_extendedprice,
           TRY_CAST(l_discount AS DECIMAL(15,2)) AS l_discount, TRY_CAST(l_tax AS DECIMAL(15,2)) AS l_tax,
           l_returnflag, l_linestatus, TRY_CAST(l_shipdate AS DATE) AS l_shipdate,
           TRY_CAST(l_commitdate AS DATE) AS l_commitdate, TRY_CAST(l_receiptdate AS DATE) AS l_receiptdate,
           l_shipinstruct, l_shipmode, l_comment
    FROM 'out/raw.parquet'
  )
  SELECT *, strftime(l_shipdate, '%Y-%m') AS l_shipdate_month FROM typed
  WHERE l_quantity > 0 AND l_discount BETWEEN 0 AND 0.10
  QUALIFY row_number() OVER (PARTITION BY l_orderkey, l_linenumber ORDER BY l_receiptdate DESC) = 1
) TO 'out/clean' (FORMAT parquet, PARTITION_BY (l_shipdate_month));
COPY (
  SELECT l_shipdate, l_returnflag, l_linestatus, sum(l_quantity) AS sum_qty,
         sum(l_extendedprice) AS sum_base_price,
         sum(l_extendedprice * (1 - l_discount)) AS sum_disc_price, count(*) AS count_order
  FROM read_parquet('out/clean/**/*.parquet', hive_partitioning = true)
  GROUP BY ALL
) TO 'out/daily.parquet' (FORMAT parquet);
