#!/usr/bin/env bash
# Installs and runs the S3-compatible test server (moto, from PyPI) on 127.0.0.1.
#
#   scripts/s3-server.sh install       create the virtualenv and install moto (idempotent)
#   scripts/s3-server.sh start FILE    start on a free port; write the env to source into FILE
#   scripts/s3-server.sh stop FILE     stop the server started with FILE
#
# The virtualenv lives in $STRATA_VENV (default: .venv in the repository).
set -euo pipefail
MOTO_VERSION="5.2.5"
here="$(cd "$(dirname "$0")/.." && pwd)"
venv="${STRATA_VENV:-$here/.venv}"
bucket="${STRATA_TEST_BUCKET:-strata-test}"

install() {
  if [ -x "$venv/bin/moto_server" ] && "$venv/bin/python" -c "import moto, sys; sys.exit(moto.__version__ != '$MOTO_VERSION')" 2>/dev/null; then
    return 0
  fi
  echo "s3-server: installing moto[server]==$MOTO_VERSION into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION"
}

start() {
  local envfile="$1"
  install
  local port
  port="$("$venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  local log="${envfile}.log"
  "$venv/bin/moto_server" -H 127.0.0.1 -p "$port" >"$log" 2>&1 &
  local pid=$!
  local endpoint="http://127.0.0.1:$port"
  for _ in $(seq 1 100); do
    if "$venv/bin/python" - "$endpoint" "$bucket" <<'PY' 2>/dev/null
import sys, urllib.request
endpoint, bucket = sys.argv[1], sys.argv[2]
req = urllib.request.Request(f"{endpoint}/{bucket}", method="PUT")
urllib.request.urlopen(req, timeout=2).read()
PY
    then
      cat >"$envfile" <<ENV
export STRATA_S3_PID=$pid
export AWS_ENDPOINT=$endpoint
export AWS_ACCESS_KEY_ID=strata-test
export AWS_SECRET_ACCESS_KEY=strata-test-secret
export AWS_REGION=us-east-1
export AWS_ALLOW_HTTP=true
export STRATA_TEST_S3_URL=s3://$bucket/
ENV
      echo "s3-server: moto $MOTO_VERSION on $endpoint (pid $pid), bucket $bucket" >&2
      return 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "s3-server: moto exited; its log:" >&2
      cat "$log" >&2
      return 1
    fi
    sleep 0.2
  done
  echo "s3-server: moto did not answer on $endpoint within 20 s; its log:" >&2
  cat "$log" >&2
  kill "$pid" 2>/dev/null || true
  return 1
}

stop() {
  local envfile="$1"
  [ -f "$envfile" ] || return 0
  local pid
  pid="$(sed -n 's/^export STRATA_S3_PID=//p' "$envfile")"
  if [ -n "$pid" ]; then
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  rm -f "$envfile" "${envfile}.log"
}

case "${1:-}" in
  install) install ;;
  start) start "${2:?usage: s3-server.sh start ENVFILE}" ;;
  stop) stop "${2:?usage: s3-server.sh stop ENVFILE}" ;;
  *) echo "usage: scripts/s3-server.sh install|start ENVFILE|stop ENVFILE" >&2; exit 2 ;;
esac
