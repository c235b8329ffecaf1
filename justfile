# Recipes mirror what CI runs. None of the README's commands needs `just`.

# Format check and lints, as CI would want them.
check:
    cargo fmt --all --check
    cargo clippy --workspace --all-targets --locked -- -D warnings

# The whole test suite, with the local S3 server (same as ./scripts/test.sh).
test *ARGS:
    ./scripts/test.sh {{ARGS}}

# The demo on ./lake.
demo:
    ./scripts/demo.sh

# The lineitem benchmark against DuckDB, the incremental and pointer benchmarks
# (same as ./scripts/bench.sh; STRATA_BENCH_SF sets the scale factor).
bench *ARGS:
    ./scripts/bench.sh {{ARGS}}

# Regenerate testdata/demo.
demo-data:
    cargo run -p strata-publish --example demo_data -- testdata/demo
