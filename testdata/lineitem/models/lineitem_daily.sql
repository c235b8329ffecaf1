-- Daily aggregates by ship date, return flag and line status.
SELECT l_shipdate, l_returnflag, l_linestatus,
       sum(l_quantity) AS sum_qty,
       sum(l_extendedprice) AS sum_base_price,
       sum(l_extendedprice * (1 - l_discount)) AS sum_disc_price,
       count(*) AS count_order
FROM lineitem
GROUP BY l_shipdate, l_returnflag, l_linestatus
