#!/usr/bin/env bash
# The lineitem benchmark, strata against DuckDB side by side, then the incremental and pointer
# benchmarks. Installs tpchgen-cli and duckdb from PyPI into a virtualenv, builds strata in
# release mode, generates TPC-H lineitem as CSV (scale factor 1 by default).
#
#   ./scripts/bench.sh                   everything, scale factor 1, 3 runs each
#   STRATA_BENCH_SF=3 ./scripts/bench.sh --only lineitem
#   STRATA_BENCH_RUNS=5 ./scripts/bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${STRATA_BENCH_VENV:-$HOME/.cache/strata/bench-venv}"
if [ ! -x "$venv/bin/tpchgen-cli" ] || ! "$venv/bin/python" -c "import duckdb" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet "tpchgen-cli==4.0.0" "duckdb==2.0.0"
fi
cargo build --release --locked --quiet -p strata-cli
strata="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release/strata"
python3 scripts/bench.py --strata "$strata" --venv "$venv" "$@"
if [ "${1:-}" != "--only" ]; then
  echo "pointer operations at 1,000 versions:"
  cargo bench --locked -p strata-cli --bench pointer 2>/dev/null | grep -E "median"
fi
