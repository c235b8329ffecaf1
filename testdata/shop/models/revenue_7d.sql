-- Rolling 7-day revenue, from the daily model.
SELECT d.order_date,
       sum(w.revenue) AS revenue_7d,
       sum(w.orders) AS orders_7d
FROM daily_revenue d
JOIN daily_revenue w
  ON w.order_date BETWEEN d.order_date - INTERVAL '6' DAY AND d.order_date
GROUP BY d.order_date
