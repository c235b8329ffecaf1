#!/usr/bin/env bash
# The demo: publishes two versions of an orders dataset from testdata/demo into ./lake, rolls
# back, and queries current and older versions. Needs only Rust; no services.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --locked --quiet -p strata-cli
strata="${CARGO_TARGET_DIR:-target}/debug/strata"
export STRATA_LAKE="${STRATA_LAKE:-./lake}"
step() { printf '\n\033[1m$ strata'; printf ' %q' "$@"; printf '\033[0m\n'; "$strata" "$@"; }

# Start from a clean demo lake, but never delete a lake the demo did not create.
if [ -d "$STRATA_LAKE" ]; then
  if [ -f "$STRATA_LAKE/.strata-demo" ]; then rm -rf "$STRATA_LAKE"; else
    echo "demo: $STRATA_LAKE exists and was not made by the demo; set STRATA_LAKE to another path" >&2
    exit 2
  fi
fi
mkdir -p "$STRATA_LAKE" && touch "$STRATA_LAKE/.strata-demo"

step publish orders --from testdata/demo/orders-2026-01.parquet --partition-by order_date --reason "January load"
step publish orders --from testdata/demo/orders-2026-01-03-correction.parquet --reason "corrected 3 January"
step versions orders
step query "SELECT order_date, count(*) AS orders, sum(amount_cents) AS cents FROM orders GROUP BY order_date ORDER BY order_date"
step rollback orders --to 1 --reason "the correction double-counted refunds"
step history orders
step query "SELECT 'current' AS version, count(*) AS orders, sum(amount_cents) AS cents FROM orders UNION ALL SELECT 'v2', count(*), sum(amount_cents) FROM \"orders@2\" ORDER BY version"
step verify orders
step datasets
