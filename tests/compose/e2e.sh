# The test body of scripts/compose-e2e (sourced by it, never run alone): the REAL
# docker-compose.yml on a real engine, checks on the running containers, faults across them, and
# the exact result. scripts/compose-e2e has already set up the engine and chosen the images; it
# provides compose(), log, say, fail, env_default, $SERVICES, $LEFT_OUT, $PROJECT and $WORK.
#
# Every fault happens while a bounded generator run publishes files with duplicates and invalid
# rows (the .env ratios). At the end, e2e-verify (tests/src/bin/e2e-verify.rs) reads every
# published file with the contract and compares with the database: the events table must hold
# exactly the valid unique ids, and the ledger's counts must add up to the files' lines.

NETWORK="${PROJECT}_default"
PG_PASSWORD=${POSTGRES_PASSWORD:-$(env_default POSTGRES_PASSWORD)}
PG_USER=${POSTGRES_USER:-$(env_default POSTGRES_USER)}
PG_DB=${POSTGRES_DB:-$(env_default POSTGRES_DB)}
# How long the test waits for anything (a service to be healthy, the backlog to drain).
E2E_TIMEOUT=${E2E_TIMEOUT:-300}

sql() { compose exec -T postgres psql -XAt -v ON_ERROR_STOP=1 -U "$PG_USER" -d "$PG_DB" -c "$1"; }

# Waits until `$1` (a shell command) succeeds, or fails the test with `$2`.
wait_until() {
    local deadline=$((SECONDS + E2E_TIMEOUT))
    until eval "$1" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$deadline" ] || fail "$2 (after ${E2E_TIMEOUT}s)"
        sleep 2
    done
}

# Container ids of a service's running containers.
running() { compose ps -q --status running "$1"; }

ingestor_count() { running ingestor | wc -l; }

prom_query() { compose exec -T prometheus promtool query instant http://127.0.0.1:9090 "$1"; }

# Prometheus sees `$1` ingestor replicas up (and the generator while it runs, if `$2` = with-generator).
targets_up() {
    local want=$1 got
    got=$(prom_query 'count(up{job="ingestor"} == 1)' | sed -n 's/.*=> \([0-9]*\) @.*/\1/p')
    [ "${got:-0}" = "$want" ] || return 1
    [ "${2:-}" != with-generator ] || [[ $(prom_query 'up{job="generator"} == 1') == *'=> 1'* ]]
}

# Prometheus scrapes the postgres-exporter, and the exporter reaches PostgreSQL as its
# least-privilege role (its password delivered by secret-init) and runs the custom queries.
exporter_up() {
    [[ $(prom_query 'up{job="postgres"} == 1') == *'=> 1'* ]] \
        && [[ $(prom_query 'pg_up == 1') == *'=> 1'* ]] \
        && [[ $(prom_query 'pg_table_total_size_bytes{relname="events"} > 0') == *'=> '* ]]
}

# Prometheus has loaded every alert of grafana/prometheus/alerts.yml and evaluated it cleanly.
alert_rules_loaded() {
    local want
    want=$(grep -c -- '- alert: ' grafana/prometheus/alerts.yml)
    compose exec -T prometheus wget -qO- 'http://127.0.0.1:9090/api/v1/rules?type=alert' \
        | python3 -c 'import json, sys
rules = [r for g in json.load(sys.stdin)["data"]["groups"] for r in g["rules"]]
sys.exit(0 if len(rules) == int(sys.argv[1]) and all(r["health"] == "ok" for r in rules) else 1)' "$want"
}

check_health() {
    local service state
    for service in $SERVICES; do
        [ "$service" = secret-init ] && continue
        for id in $(running "$service"); do
            state=$(docker inspect -f '{{.State.Health.Status}}' "$id")
            [ "$state" = healthy ] || fail "$service ($id) is $state, not healthy"
        done
    done
    [ "$(docker inspect -f '{{.State.ExitCode}}' "$(compose ps -aq secret-init)")" = 0 ] \
        || fail "secret-init did not exit 0"
    say "every service healthy; secret-init exited 0"
}

# The hardening docker-compose.yml promises, read from the running containers.
check_hardening() {
    local id name ro caps secopt ports root_procs
    for id in $(compose ps -q --status running); do
        name=$(docker inspect -f '{{index .Config.Labels "com.docker.compose.service"}}' "$id")
        ro=$(docker inspect -f '{{.HostConfig.ReadonlyRootfs}}' "$id")
        caps=$(docker inspect -f '{{json .HostConfig.CapDrop}}' "$id")
        secopt=$(docker inspect -f '{{json .HostConfig.SecurityOpt}}' "$id")
        ports=$(docker inspect -f '{{range $p, $b := .HostConfig.PortBindings}}{{range $b}}{{.HostIp}} {{end}}{{end}}' "$id")
        # pgAdmin's entrypoint writes into the image at every start (documented exemption).
        [ "$ro" = true ] || [ "$name" = pgadmin ] || fail "$name: root filesystem is not read-only"
        [[ $caps == *'"ALL"'* ]] || fail "$name: capabilities not dropped ($caps)"
        [[ $secopt == *no-new-privileges* ]] || fail "$name: no-new-privileges missing ($secopt)"
        for ip in $ports; do [ "$ip" = 127.0.0.1 ] || fail "$name: port published on $ip"; done
        # No process runs as root: images with a USER, and postgres after its entrypoint's gosu.
        root_procs=$(docker top "$id" -eo uid,pid,args | awk 'NR > 1 && $1 == 0' || true)
        [ -z "$root_procs" ] || fail "$name runs processes as root: $root_procs"
        say "  $name: read-only=$ro, cap_drop=$caps, $secopt, ports on ${ports:-nothing}, no root process"
    done
}

# The ingestor's own account (`ingestor status --json`) equals the ledger's, read with SQL.
check_status_agrees() {
    local status ledger
    status=$(compose exec -T --index 1 ingestor ingestor status --json \
        | python3 -c 'import json,sys; s=json.load(sys.stdin); t=s["totals"]; print(t["files_loaded"], t["files_failed"], t["lines"], t["accepted"], t["duplicates"], t["rejected"])')
    ledger=$(sql "SELECT count(*) FILTER (WHERE status = 'loaded') || ' ' || count(*) FILTER (WHERE status = 'failed')
        || ' ' || coalesce(sum(lines), 0) || ' ' || coalesce(sum(accepted), 0) || ' '
        || coalesce(sum(duplicates), 0) || ' ' || coalesce(sum(rejected), 0) FROM ingest_files")
    [ "$status" = "$ledger" ] || fail "ingestor status says '$status', SQL says '$ledger' (loaded failed lines accepted duplicates rejected)"
    say "ingestor status agrees with SQL: loaded failed lines accepted duplicates rejected = $status"
}

# Waits for the generator to finish its bounded run and the ingestors to drain the directory.
wait_drained() {
    local gen
    gen=$(compose ps -aq generator)
    wait_until "[ \"\$(docker inspect -f '{{.State.Status}} {{.State.ExitCode}}' $gen)\" = 'exited 0' ]" \
        "the generator did not finish its bounded run"
    wait_until "[ \"\$(compose exec -T --index 1 ingestor ingestor status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"backlog\"][\"files\"])')\" = 0 ]" \
        "the ingestors did not drain the input directory"
}

events_stored() { sql "SELECT count(*) FROM events"; }

# A first start whose schema script fails half-way: the image's entrypoint stops, the restart
# policy starts PostgreSQL again on the half-made volume (which it no longer initialises), and
# then the server answers pg_isready, but the compose health check must still say unhealthy.
check_failed_first_start_never_healthy() {
    local project="${PROJECT}-broken-init" id check
    local broken=(docker compose -p "$project" -f docker-compose.yml -f tests/compose/broken-init/compose.yml)
    "${broken[@]}" down -v >/dev/null 2>&1 || true
    "${broken[@]}" up -d postgres >/dev/null 2>&1 || true
    id=$("${broken[@]}" ps -aq postgres)
    [ -n "$id" ] || fail "the broken-init postgres container was not created"
    wait_until "[ \"\$(docker inspect -f '{{.RestartCount}}' $id)\" -ge 1 ] && docker exec $id pg_isready -q -h 127.0.0.1" \
        "PostgreSQL did not restart on the half-initialised volume"
    check=$(docker inspect -f '{{index .Config.Healthcheck.Test 1}}' "$id")
    if docker exec "$id" sh -c "$check" >/dev/null 2>&1; then
        "${broken[@]}" down -v >/dev/null 2>&1 || true
        fail "the postgres health check passes on a half-initialised volume"
    fi
    # Captured first: `logs | grep -q` fails under pipefail when grep's early exit makes the
    # writer die of SIGPIPE.
    local logs
    logs=$("${broken[@]}" logs postgres 2>&1)
    [[ $logs == *'division by zero'* ]] \
        || fail "the failed first start does not show its cause in docker compose logs postgres"
    "${broken[@]}" down -v >/dev/null 2>&1
    say "a first start that failed half-way: pg_isready answers, the health check says unhealthy, the log names the cause"
}

# secret-init refuses a password Grafana or a URL would misread, naming the .env variable.
check_secret_init_refuses() {
    local bad output
    for bad in 'has$dollar' 'has space'; do
        if output=$(POSTGRES_GRAFANA_PASSWORD=$bad compose run --rm --no-deps secret-init 2>&1); then
            fail "secret-init accepted POSTGRES_GRAFANA_PASSWORD='$bad'"
        fi
        [[ $output == *"POSTGRES_GRAFANA_PASSWORD in .env contains"* ]] \
            || fail "secret-init refused '$bad' without naming the variable: $output"
    done
    say "secret-init refuses passwords with \$ or whitespace, naming the variable"
}

fault_kill() {
    local id
    id=$(running ingestor | sed -n 1p)
    say "docker kill -s KILL ingestor ($id) at $(events_stored) events; docker start it again"
    docker kill -s KILL "$id" >/dev/null
    sleep 2
    docker start "$id" >/dev/null
}

# A crash, not an operator's stop: kill -9 from the host, so the restart policy must act.
fault_crash() {
    local id pid restarts
    id=$(running ingestor | sed -n 1p)
    pid=$(docker inspect -f '{{.State.Pid}}' "$id")
    restarts=$(docker inspect -f '{{.RestartCount}}' "$id")
    say "kill -9 of the ingestor's processes ($id, pid $pid) at $(events_stored) events; unless-stopped restarts it"
    pkill -9 -P "$pid" || true
    kill -9 "$pid" 2>/dev/null || true
    wait_until "[ \"\$(docker inspect -f '{{.RestartCount}} {{.State.Status}}' $id)\" = '$((restarts + 1)) running' ]" \
        "the crashed ingestor was not restarted by its restart policy"
}

fault_network() {
    local id aliases alias_flags=()
    id=$(running ingestor | sed -n 1p)
    aliases=$(docker inspect -f "{{range .NetworkSettings.Networks}}{{range .Aliases}}{{.}} {{end}}{{end}}" "$id")
    for a in $aliases; do alias_flags+=(--alias "$a"); done
    say "docker network disconnect ingestor ($id) for 20 s at $(events_stored) events"
    docker network disconnect "$NETWORK" "$id"
    sleep 20
    docker network connect "${alias_flags[@]}" "$NETWORK" "$id"
    say "reconnected with aliases: $aliases"
}

run_e2e() {
    local started=$SECONDS
    trap 'status=$?; if [ $status -ne 0 ]; then collect_logs; fi; compose down -v --remove-orphans >/dev/null 2>&1 || true' EXIT

    log "clean start: docker compose down -v"
    compose down -v --remove-orphans >/dev/null 2>&1 || true

    log "docker compose build"
    local build_started=$SECONDS
    compose build ingestor generator
    say "images built in $((SECONDS - build_started)) s"

    log "secret-init's password rules"
    check_secret_init_refuses
    log "PostgreSQL: a failed first start never turns healthy"
    check_failed_first_start_never_healthy

    # A bounded run: E2E_FILES files of E2E_ROWS rows, with the .env fault ratios.
    export GENERATOR_FILES=$E2E_FILES GENERATOR_ROWS=$E2E_ROWS GENERATOR_RATE=$E2E_RATE
    log "docker compose up -d --wait ($SERVICES)"
    # shellcheck disable=SC2086 # a list of service names
    compose up -d --wait $SERVICES
    [ -z "$LEFT_OUT" ] || say "left out (no image on this machine):$LEFT_OUT"
    check_health
    log "hardening, read from docker inspect"
    check_hardening
    if [[ " $SERVICES " == *" pgadmin "* ]]; then
        log "pgAdmin from the host: log in, the registered server, connect, list databases"
        python3 tests/compose/pgadmin_check.py "http://127.0.0.1:$PGADMIN_HOST_PORT" \
            "${PGADMIN_EMAIL:-$(env_default PGADMIN_EMAIL)}" \
            "${PGADMIN_PASSWORD:-$(env_default PGADMIN_PASSWORD)}" "$PG_PASSWORD"
    fi
    log "events reach PostgreSQL; Prometheus sees every target"
    wait_until '[ "$(events_stored)" -gt 0 ]' "no event reached PostgreSQL"
    say "$(events_stored) events stored"
    wait_until 'targets_up 1 with-generator' "Prometheus does not report the generator and the ingestor up"
    say "Prometheus: generator and 1 ingestor up"
    wait_until 'exporter_up' "Prometheus does not report the postgres exporter up and reading PostgreSQL"
    say "Prometheus: postgres-exporter up, pg_up = 1, events table $(prom_query 'pg_table_total_size_bytes{relname="events"}' | sed -n 's/.*=> \([0-9.e+]*\) @.*/\1/p') bytes"
    wait_until 'alert_rules_loaded' "Prometheus did not load and evaluate every rule of grafana/prometheus/alerts.yml"
    say "Prometheus: every alert of alerts.yml loaded and evaluating; firing now: $(prom_query 'count(ALERTS{alertstate="firing"}) or vector(0)' | sed -n 's/.*=> \([0-9]*\) @.*/\1/p')"

    log "faults: ingestor killed and crashed"
    fault_kill
    fault_crash
    fault_kill
    fault_crash
    log "faults: docker compose restart postgres, twice"
    say "restart at $(events_stored) events"
    compose restart postgres
    sleep 5
    say "restart at $(events_stored) events"
    compose restart postgres
    log "fault: an ingestor cut off from the network"
    fault_network
    log "fault: --scale ingestor=3, one replica killed"
    # shellcheck disable=SC2086
    compose up -d --wait --scale ingestor=3 $SERVICES
    wait_until 'targets_up 3' "Prometheus does not see 3 ingestor replicas up"
    say "Prometheus: 3 ingestor replicas up"
    docker kill -s KILL "$(running ingestor | tail -1)" >/dev/null
    say "one replica killed at $(events_stored) events; $(ingestor_count) replicas run"
    log "down, then up again (volumes kept)"
    compose down
    export GENERATOR_FILES=$((E2E_FILES / 4))
    # shellcheck disable=SC2086
    compose up -d --wait $SERVICES
    check_health

    log "wait for the generator's bounded run and the drain"
    wait_drained
    check_status_agrees

    log "the exact result: every published file read back with the contract"
    local published=$WORK/published
    rm -rf "$published" && mkdir -p "$published"
    docker run --rm -v "${PROJECT}_events:/data:ro" --network none "$DEBIAN_IMAGE" tar -C /data -c . \
        | tar -x -C "$published"
    ls "$published"
    cargo build -q --locked -p stack-tests --bin e2e-verify
    "${CARGO_TARGET_DIR:-target}/debug/e2e-verify" "$published" \
        "postgres://$PG_USER:$PG_PASSWORD@127.0.0.1:$POSTGRES_HOST_PORT/$PG_DB"
    log "compose end-to-end test passed in $((SECONDS - started)) s"
}

collect_logs() {
    say "--- last log lines of every service ---"
    compose logs --no-color --tail 40 || true
    compose ps -a || true
}
