#!/usr/bin/env bash
# The main job: runs the example pipeline (testdata/shop: messy order and customer exports ->
# raw landing -> cleaned and quarantined -> daily and 7-day revenue) into ./lake, then shows the
# results, the quarantine, an incremental one-day run, a rollback and an older version.
# Needs only Rust; no services.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --locked --quiet -p strata-cli
strata="${CARGO_TARGET_DIR:-target}/debug/strata"
export STRATA_LAKE="${STRATA_LAKE:-./lake}"
step() {
  printf '\n\033[1m$ strata'
  for a in "$@"; do
    case "$a" in *[[:space:]\"]*) printf " '%s'" "$a" ;; *) printf ' %s' "$a" ;; esac
  done
  printf '\033[0m\n'
  "$strata" "$@"
}

# Start from a clean demo lake, but never delete a lake the demo did not create.
if [ -d "$STRATA_LAKE" ]; then
  if [ -f "$STRATA_LAKE/.strata-demo" ]; then rm -rf "$STRATA_LAKE"; else
    echo "demo: $STRATA_LAKE exists and was not made by the demo; set STRATA_LAKE to another path" >&2
    exit 2
  fi
fi
mkdir -p "$STRATA_LAKE" && touch "$STRATA_LAKE/.strata-demo"

step run --pipeline testdata/shop/strata.toml
step datasets
step query "SELECT order_date, orders, revenue FROM daily_revenue ORDER BY order_date"
step query "SELECT order_date, revenue_7d FROM revenue_7d ORDER BY order_date"
step query "SELECT order_id, _rule, _reason, _line FROM \"orders.quarantine\" ORDER BY order_id"
step run --pipeline testdata/shop/strata.toml --date 2026-01-03
step run --pipeline testdata/shop/strata.toml --date 2026-01-03
step runs
step versions daily_revenue
step rollback daily_revenue --to 1 --reason "demo: roll back to the first run"
step query "SELECT 'current' AS version, sum(revenue) AS revenue FROM daily_revenue UNION ALL SELECT 'v2', sum(revenue) FROM \"daily_revenue@2\" ORDER BY version"
step history daily_revenue
step verify orders
step reconcile orders --input
