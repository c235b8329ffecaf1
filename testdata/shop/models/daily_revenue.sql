-- Revenue per day from paid and shipped orders (refunds excluded).
SELECT order_date,
       count(*) AS orders,
       sum(amount) AS revenue,
       count(DISTINCT customer_id) AS customers
FROM orders
WHERE status IN ('paid', 'shipped')
GROUP BY order_date
