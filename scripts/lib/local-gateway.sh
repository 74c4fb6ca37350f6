# Sourced by tests/clients/run.sh and scripts/bench-load: run `gateway serve` on its own
# PostgreSQL in a scratch directory, and stop both (and nothing else) afterwards.
#
#   lg_free_port                      a free TCP port on 127.0.0.1
#   lg_start BIN CONFIG_DIR WORK_DIR  starts `BIN serve --config CONFIG_DIR` in WORK_DIR (log,
#                                     appended to across restarts:
#                                     WORK_DIR/gateway.log); sets LG_PID
#   lg_wait_ready URL SECS            waits for URL/readyz, failing early if the gateway exits
#   lg_pg_port PG_DIR                 the port of the cluster running in PG_DIR
#   lg_pg_passfile PG_DIR             its password file (pgpass format): export it as PGPASSFILE
#                                     and psql, or a postgres://postgres@... URL, connects
#   lg_stop PG_DIR                    SIGTERM to the gateway (SIGKILL after 15 s), then stops
#                                     the cluster in PG_DIR (pg_ctl, as postgres when root)
#
# The gateway leaves its cluster running when it exits (by design: a restart reuses it), so
# lg_stop must stop it. Only the processes started here are signalled, by pid.

LG_PID=""

lg_free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

lg_start() {
  local bin=$1 config=$2 work=$3
  # A GATEWAY__* variable from the caller's environment would override the test's config.
  local -a unset_args=()
  local v
  for v in $(compgen -e); do
    case $v in GATEWAY_*) unset_args+=(-u "$v") ;; esac
  done
  (cd "$work" && exec env "${unset_args[@]}" NO_COLOR=1 RUST_LOG="${RUST_LOG:-info}" \
    "$bin" serve --config "$config") >>"$work/gateway.log" 2>&1 &
  LG_PID=$!
}

lg_wait_ready() {
  local url=$1 secs=$2 i
  for ((i = 0; i < secs * 10; i++)); do
    if ! kill -0 "$LG_PID" 2>/dev/null; then
      echo "the gateway exited before it was ready" >&2
      return 1
    fi
    if curl -fsS -o /dev/null --max-time 2 "$url/readyz" 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  echo "the gateway was not ready after ${secs}s" >&2
  return 1
}

lg_pg_port() {
  sed -n 4p "$1/postmaster.pid"
}

lg_pg_passfile() {
  echo "$1/pgpass"
}

lg_pg_ctl() {
  local p
  p=$(command -v pg_ctl 2>/dev/null || true)
  if [ -z "$p" ]; then
    p=$(ls -d /usr/lib/postgresql/*/bin/pg_ctl 2>/dev/null | sort -V | tail -n 1 || true)
  fi
  echo "$p"
}

lg_stop() {
  local pg_dir=$1 i
  if [ -n "$LG_PID" ] && kill -0 "$LG_PID" 2>/dev/null; then
    kill -TERM "$LG_PID" 2>/dev/null || true
    for ((i = 0; i < 150; i++)); do
      kill -0 "$LG_PID" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$LG_PID" 2>/dev/null || true
  fi
  if [ -n "$LG_PID" ]; then
    wait "$LG_PID" 2>/dev/null || true
  fi
  LG_PID=""
  [ -f "$pg_dir/postmaster.pid" ] || return 0
  local pg_ctl postmaster
  pg_ctl=$(lg_pg_ctl)
  if [ -n "$pg_ctl" ]; then
    if [ "$(id -u)" = 0 ]; then
      runuser -u postgres -- "$pg_ctl" stop -D "$pg_dir" -m fast -w -t 60 >/dev/null 2>&1 || true
    else
      "$pg_ctl" stop -D "$pg_dir" -m fast -w -t 60 >/dev/null 2>&1 || true
    fi
  fi
  # No pg_ctl, or it failed: SIGINT (fast shutdown) to the postmaster named in its pid file.
  if [ -f "$pg_dir/postmaster.pid" ]; then
    postmaster=$(sed -n 1p "$pg_dir/postmaster.pid")
    if [ -n "$postmaster" ] && [ "$(cat "/proc/$postmaster/comm" 2>/dev/null)" = postgres ]; then
      kill -INT "$postmaster" 2>/dev/null || true
      for ((i = 0; i < 300; i++)); do
        kill -0 "$postmaster" 2>/dev/null || break
        sleep 0.1
      done
    fi
  fi
}
