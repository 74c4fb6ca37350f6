#!/usr/bin/env bash
# Segment's official client libraries against a real `gateway serve`, end to end.
#
#   tests/clients/run.sh                 both steps
#   tests/clients/run.sh --ingest-only   step 1 only (CLIENTS_INGEST_ONLY=1 does the same)
#
# Installs @segment/analytics-node (npm ci, tests/clients/node) and segment-analytics-python
# (pinned, in a venv at $CARGO_TARGET_DIR/clients-venv), builds the gateway (release), starts a
# mock Iterable (tests/clients/mock_iterable.py) and `gateway serve` in live mode on its own
# PostgreSQL in a scratch directory under /tmp, then with each library sends an identify, a
# track and an Order Completed (distinct userIds) and closes the client.
#
#   step 1, ingest:   the clients got 200s and every event is in the audit log (table event)
#   step 2, delivery: within CLIENTS_DELIVERY_TIMEOUT seconds (30), the mock Iterable received a
#                     users/bulkUpdate with each identify's user, an events/trackBulk with each
#                     track (id = messageId) and a commerce/trackPurchase per order (total, items)
#
# Prints PASS/FAIL per check and "clients: N passed, M failed"; exits 1 on any failure. The
# gateway, its PostgreSQL and the mock are stopped, and the scratch directory removed, however
# the script ends (KEEP_TMP=1 keeps the directory: logs, config, the mock's requests.jsonl).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root"
# shellcheck source=../../scripts/lib/local-gateway.sh
source "$root/scripts/lib/local-gateway.sh"

ingest_only=${CLIENTS_INGEST_ONLY:-0}
for arg in "$@"; do
  case $arg in
    --ingest-only) ingest_only=1 ;;
    -h | --help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done
delivery_timeout=${CLIENTS_DELIVERY_TIMEOUT:-30}
target=${CARGO_TARGET_DIR:-target}
case $target in /*) ;; *) target=$root/$target ;; esac

for tool in node npm python3 psql cargo curl; do
  command -v "$tool" >/dev/null || { echo "tests/clients/run.sh needs $tool on PATH" >&2; exit 2; }
done

tmp=""
mock_pid=""
cleanup() {
  local status=$?
  set +e
  if [ -n "$tmp" ]; then
    lg_stop "$tmp/pg"
    if [ "$status" != 0 ] && [ -f "$tmp/gateway.log" ]; then
      echo "--- last lines of the gateway's log ---" >&2
      tail -n 30 "$tmp/gateway.log" >&2
    fi
  fi
  if [ -n "$mock_pid" ]; then
    kill -TERM "$mock_pid" 2>/dev/null
    wait "$mock_pid" 2>/dev/null
  fi
  if [ -n "$tmp" ]; then
    if [ "${KEEP_TMP:-0}" = 1 ]; then
      echo "kept $tmp" >&2
    else
      rm -rf "$tmp"
    fi
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

echo "== installing the client libraries"
(cd "$here/node" && npm ci --no-audit --no-fund --loglevel=error)
venv=$target/clients-venv
if ! "$venv/bin/python" -c 'import sys' 2>/dev/null; then
  rm -rf "$venv"
  mkdir -p "$target"
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/python/requirements.txt"

# CI has just built the test profile: GATEWAY_PROFILE=debug reuses it instead of a release build.
profile="${GATEWAY_PROFILE:-release}"
echo "== building the gateway ($profile)"
if [ "$profile" = release ]; then
  cargo build --release --locked --quiet --bin gateway
else
  cargo build --locked --quiet --bin gateway
fi
gateway=$target/$profile/gateway

tmp=$(mktemp -d /tmp/gateway-clients.XXXXXX)
chmod 755 "$tmp" # the postgres system user must reach $tmp/pg when this runs as root
mkdir "$tmp/config"
results=$tmp/results.txt
: >"$results"

echo "== starting the mock Iterable and the gateway"
python3 "$here/mock_iterable.py" --log "$tmp/requests.jsonl" --port-file "$tmp/mock.port" \
  >"$tmp/mock.log" 2>&1 &
mock_pid=$!
for ((i = 0; i < 100; i++)); do
  [ -s "$tmp/mock.port" ] && break
  kill -0 "$mock_pid" 2>/dev/null || { cat "$tmp/mock.log" >&2; exit 1; }
  sleep 0.1
done
mock_port=$(cat "$tmp/mock.port")

write_key=clients-write-key-$RANDOM$RANDOM
api_key=clients-iterable-key-$RANDOM$RANDOM
port=$(lg_free_port)
cp config/default.toml "$tmp/config/default.toml"
cat >"$tmp/config/local.toml" <<EOF
# Written by tests/clients/run.sh.
[application]
port = $port
log_format = "json"

[database]
dir = "$tmp/pg"
port = 0

[delivery]
mode = "live"

[iterable]
us_url = "http://127.0.0.1:$mock_port"
eu_url = "http://127.0.0.1:$mock_port"

[[connections]]
name = "clients"
write_key = "$write_key"
iterable_api_key = "$api_key"
EOF
GATEWAY_ENVIRONMENT=local lg_start "$gateway" "$tmp/config" "$tmp"
url=http://127.0.0.1:$port
lg_wait_ready "$url" 120
pg_port=$(lg_pg_port "$tmp/pg")
# The cluster asks for its password: psql and the load generator read it from here.
export PGPASSFILE=$(lg_pg_passfile "$tmp/pg")
echo "gateway $url (pid $LG_PID), PostgreSQL on port $pg_port, mock Iterable on port $mock_port"

run_id=r$(date +%s)-$RANDOM
echo "== sending with each client (run $run_id)"
clients_ok=1
(cd "$here/node" && timeout 90 node send.mjs --host "$url" --write-key "$write_key" \
  --run "$run_id" --out "$tmp/node.json") || clients_ok=0
timeout 90 "$venv/bin/python" "$here/python/send.py" --host "$url" --write-key "$write_key" \
  --run "$run_id" --out "$tmp/python.json" || clients_ok=0
[ "$clients_ok" = 1 ] || echo "a client reported an error (see above)"

echo "== step 1: ingest (200s from the gateway, events in the audit log)"
python3 "$here/check.py" ingest --sent "$tmp/node.json" "$tmp/python.json" --pg-port "$pg_port" \
  --results "$results" || true

if [ "$ingest_only" = 1 ]; then
  echo "== step 2: delivery to the mock Iterable: SKIPPED (--ingest-only)"
else
  echo "== step 2: delivery to the mock Iterable (waiting up to ${delivery_timeout}s)"
  python3 "$here/check.py" delivery --sent "$tmp/node.json" "$tmp/python.json" \
    --log "$tmp/requests.jsonl" --api-key "$api_key" --timeout "$delivery_timeout" \
    --results "$results" || true
  if grep -q '^FAIL' "$results"; then
    echo "  event states now:"
    psql -X -q -A -t -h 127.0.0.1 -p "$pg_port" -U postgres -d gateway \
      -c "select '    ' || state || ' ' || coalesce(state_reason, '') || ': ' || count(*) from event group by state, state_reason" || true
  fi
fi

passed=$(grep -c '^PASS' "$results" || true)
failed=$(grep -c '^FAIL' "$results" || true)
echo "== summary"
sed 's/^/  /' "$results"
echo "clients: $passed passed, $failed failed"
[ "$failed" = 0 ] && [ "$passed" -gt 0 ]
