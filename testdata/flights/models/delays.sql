-- Delays per day, tenant, origin city, carrier and plane model. Planes are effective-dated: a
-- flight sees the registration valid on its own date, whatever version of planes is bound.
SELECT
  f.flight_date,
  f.tenant,
  a.city AS origin_city,
  c.name AS carrier,
  p.model AS plane,
  count(*) AS flights,
  sum(f.dep_delay) AS total_delay
FROM flights f
JOIN airports a ON a.code = f.origin
JOIN carriers c ON c.carrier = f.carrier
LEFT JOIN planes p
  ON p.tail = f.tail
 AND f.flight_date >= p.valid_from
 AND (p.valid_to IS NULL OR f.flight_date < p.valid_to)
GROUP BY f.flight_date, f.tenant, a.city, c.name, p.model
