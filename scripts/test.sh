#!/usr/bin/env bash
# The whole test suite: starts the S3-compatible test server (moto, installed from PyPI into a
# virtualenv), runs every test of the workspace against memory, local disk and S3, and stops the
# server again, failure or not.
#
#   ./scripts/test.sh                 all tests
#   ./scripts/test.sh -p strata-cli   extra arguments go to `cargo test`
set -euo pipefail
cd "$(dirname "$0")/.."

envfile="$(mktemp -t strata-s3.XXXXXX)"
cleanup() { scripts/s3-server.sh stop "$envfile"; }
trap cleanup EXIT INT TERM
scripts/s3-server.sh start "$envfile"
# shellcheck disable=SC1090
source "$envfile"

cargo test --workspace --locked "$@"
