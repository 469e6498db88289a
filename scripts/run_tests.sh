#!/usr/bin/env bash
# Runs the whole suite against a real PostgreSQL server.
#
# - AE_ANOMALY_TEST_PG_URL set: the PostgreSQL tests use that server.
# - Otherwise a throwaway server is started from the PostgreSQL binaries (installed with
#   apt-get when missing and this runs as root with apt available, as on fresh CI
#   machines): initdb in a temporary folder (as the postgres user when run as root),
#   a random free port on 127.0.0.1, fsync off; it is stopped and removed on exit.
# - AE_ANOMALY_TEST_PG_BIN is exported too: fault tests start their own servers with it.
# Without either, the PostgreSQL tests skip saying how to enable them; with CI=true such a
# skip fails the run (tests/integration/conftest.py).
# - Alertmanager and Prometheus (Debian's prometheus-alertmanager and prometheus packages)
#   for the alerting tests: installed the same way when missing (root, apt-get available);
#   the tests start their own throwaway servers on 127.0.0.1.
#
# Usage: scripts/run_tests.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
export PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=true MLFLOW_DISABLE_TELEMETRY=true

log() { echo "run_tests: $*" >&2; }

find_pg_bin() {
    local d
    if [[ -n "${AE_ANOMALY_TEST_PG_BIN:-}" && -x "${AE_ANOMALY_TEST_PG_BIN}/initdb" ]]; then
        echo "$AE_ANOMALY_TEST_PG_BIN"; return 0
    fi
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k4 -n -r); do
        if [[ -x "$d/initdb" && -x "$d/pg_ctl" ]]; then echo "$d"; return 0; fi
    done
    if command -v pg_config >/dev/null 2>&1; then
        d="$(pg_config --bindir)"
        if [[ -x "$d/initdb" ]]; then echo "$d"; return 0; fi
    fi
    if command -v initdb >/dev/null 2>&1; then dirname "$(command -v initdb)"; return 0; fi
    return 1
}

install_pg() {
    if [[ "$(id -u)" != 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
        return 1
    fi
    log "PostgreSQL binaries not found: installing them with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    # Package scripts must not start a system server in a container.
    local policy=/usr/sbin/policy-rc.d created_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' > $policy && chmod +x $policy && created_policy=1
    fi
    { apt-get update -qq && apt-get install -y -qq postgresql >/dev/null; } || {
        log "apt-get install postgresql failed"
        [[ $created_policy == 1 ]] && rm -f $policy
        return 1
    }
    [[ $created_policy == 1 ]] && rm -f $policy
    return 0
}

install_alerting() {
    if command -v prometheus-alertmanager >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then
        return 0
    fi
    if [[ "$(id -u)" != 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
        log "prometheus-alertmanager / prometheus not installed: the Alertmanager tests skip"
        return 1
    fi
    log "Alertmanager / Prometheus not found: installing them with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    local policy=/usr/sbin/policy-rc.d created_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' > $policy && chmod +x $policy && created_policy=1
    fi
    { apt-get update -qq && apt-get install -y -qq prometheus-alertmanager prometheus >/dev/null; } || {
        log "apt-get install prometheus-alertmanager prometheus failed"
        [[ $created_policy == 1 ]] && rm -f $policy
        return 1
    }
    [[ $created_policy == 1 ]] && rm -f $policy
    return 0
}

free_port() {
    "$BIN/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

PGTMP=""
PG_BIN=""
as_pg() {
    if [[ "$(id -u)" == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}
stop_pg() {
    if [[ -n "$PGTMP" && -d "$PGTMP" ]]; then
        as_pg "$PG_BIN/pg_ctl" -D "$PGTMP/data" -m fast -w stop >/dev/null 2>&1 || true
        rm -rf "$PGTMP"
    fi
}

start_pg() {
    PG_BIN="$(find_pg_bin)" || { install_pg && PG_BIN="$(find_pg_bin)"; } || return 1
    if [[ "$(id -u)" == 0 ]] && ! id postgres >/dev/null 2>&1; then
        useradd --system --no-create-home --shell /usr/sbin/nologin postgres
    fi
    PGTMP="$(mktemp -d /tmp/ae-anomaly-pg.XXXXXX)"
    trap stop_pg EXIT
    chmod 755 "$PGTMP"
    [[ "$(id -u)" == 0 ]] && chown postgres "$PGTMP"
    local port
    port="$(free_port)"
    as_pg "$PG_BIN/initdb" -D "$PGTMP/data" -U postgres --auth=trust -E UTF8 --no-locale \
        >"$PGTMP/initdb.log" 2>&1 || { cat "$PGTMP/initdb.log" >&2; return 1; }
    as_pg "$PG_BIN/pg_ctl" -D "$PGTMP/data" -l "$PGTMP/server.log" -w -t 60 start \
        -o "-p $port -k $PGTMP -c listen_addresses=127.0.0.1 -c fsync=off \
            -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" \
        >/dev/null || { cat "$PGTMP/server.log" >&2; return 1; }
    export AE_ANOMALY_TEST_PG_URL="postgresql+psycopg://postgres@127.0.0.1:$port/postgres"
    export AE_ANOMALY_TEST_PG_BIN="$PG_BIN"
    log "PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$port ($PGTMP)"
}

if [[ -n "${AE_ANOMALY_TEST_PG_URL:-}" ]]; then
    log "using the PostgreSQL server at AE_ANOMALY_TEST_PG_URL"
    if [[ -z "${AE_ANOMALY_TEST_PG_BIN:-}" ]] && PG_BIN="$(find_pg_bin)"; then
        export AE_ANOMALY_TEST_PG_BIN="$PG_BIN"
    fi
elif ! start_pg; then
    log "no PostgreSQL server: the PostgreSQL tests will skip (fail when CI=true)"
fi

install_alerting || true

set +e
"$BIN/python" -m pytest -q -ra "$@"
rc=$?
set -e
exit $rc
