SELECT event_date, count(*) AS events, sum(amount) AS amount
FROM events
WHERE event_date BETWEEN $from AND $to
GROUP BY event_date
