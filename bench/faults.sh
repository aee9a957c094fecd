#!/usr/bin/env bash
# bench/faults.sh — what a failing backend costs clients: switchyard vs nginx vs HAProxy.
#
# Three backends (each a single-process nginx, so that one can be killed, stopped or
# restarted on its own) behind each proxy in turn; wrk drives CONNS keep-alive
# connections for DURATION and, FAULT_AT into the run, one fault is injected:
#
#   kill9    backend 2 gets SIGKILL
#   hang     backend 2 gets SIGSTOP: it accepts (the kernel does) and never answers
#   503      backend 3 answers 503 to everything, from the start
#   rolling  each backend in turn is stopped and started again (switchyard: marked
#            draining in its instances file first, as `switchyard register` does on
#            SIGTERM; nginx and HAProxy have no draining and rely on their retries)
#
# Per proxy and scenario: requests, failed requests (socket errors, timeouts and
# non-2xx answers, as wrk counts them) and p99. The proxies are configured alike:
#   nginx    proxy_next_upstream error timeout http_503; max_fails=1 fail_timeout=10s;
#            proxy_connect_timeout 1s; proxy_read_timeout 2s
#   HAProxy  retries 3; option redispatch; observe layer7; on-error mark-down; TCP checks
#            every 1s; timeout connect 1s; timeout server 2s
#   switchyard  timeouts.connect 1s; route retry = { attempts = 3, on = [connect-failure,
#            reset, 503, 504], per_try_timeout = 2s }; outlier ejection on its defaults
#
# Knobs: DURATION=10s  FAULT_AT=3  CONNS=20  ONLY="switchyard nginx haproxy"
#        SCENARIOS="kill9 hang 503 rolling"  SWITCHYARD=target/release/switchyard  KEEP_TMP=1
# Usage: bench/faults.sh        SCENARIOS=hang ONLY=switchyard bench/faults.sh
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=bench/lib.sh
. "$BENCH_DIR/lib.sh"

DURATION=${DURATION:-10s}
FAULT_AT=${FAULT_AT:-3}
CONNS=${CONNS:-20}
ONLY=${ONLY:-"switchyard nginx haproxy"}
SCENARIOS=${SCENARIOS:-"kill9 hang 503 rolling"}
WORKERS=${WORKERS:-1}

BACKEND_PORTS=(19101 19102 19103)
SWITCHYARD_PORT=18180
SWITCHYARD_ADMIN_PORT=19911
NGINX_PORT=18181
HAPROXY_PORT=18182

declare -A BACKEND_PID=()
declare -A OUT_FAILED=() OUT_P99=() OUT_REQS=()

require_tool nginx nginx
require_tool wrk wrk
require_tool curl curl
[[ " $ONLY " != *" haproxy "* ]] || require_tool haproxy haproxy
[[ "$FAULT_AT" =~ ^[0-9]+$ ]] || die "FAULT_AT must be whole seconds (got '$FAULT_AT')"

bench_init faults

# backend_conf N STATUS — a one-process nginx answering STATUS "backend-N".
backend_conf() {
  local n=$1 status=$2 dir="$BENCH_TMP/backend$1"
  mkdir -p "$dir"
  cat >"$dir/nginx.conf" <<EOF
master_process off;
daemon off;
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 8192; }
http {
    access_log off;
    default_type text/plain;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
$(nginx_temp_paths "$dir")
    server { listen 127.0.0.1:${BACKEND_PORTS[n - 1]} backlog=4096; return $status "backend-$n\n"; }
}
EOF
  echo "$dir/nginx.conf"
}

start_backend() {
  local n=$1 status=${2:-200} conf
  conf="$(backend_conf "$n" "$status")"
  start_bg "backend$n" load nginx -c "$conf" -p "$(dirname "$conf")" -e "$(dirname "$conf")/error.log"
  BACKEND_PID[$n]=$BG_PID
  wait_for_port "${BACKEND_PORTS[n - 1]}" "$BG_PID" 5 || die "backend $n did not start"
}

stop_backend() {
  local n=$1 pid=${BACKEND_PID[$1]:-}
  [[ -n "$pid" ]] || return 0
  kill -CONT "$pid" 2>/dev/null || true
  stop_bg "$pid"
  BACKEND_PID[$n]=""
}

# instances FILE STATUS1 STATUS2 STATUS3 — the switchyard instances file.
instances() {
  local file=$1 n
  shift
  : >"$file.tmp"
  for n in 1 2 3; do
    printf '[[instance]]\nservice = "bench"\nid = "b%s"\naddr = "127.0.0.1:%s"\nmetadata = { status = "%s" }\n\n' \
      "$n" "${BACKEND_PORTS[n - 1]}" "$1" >>"$file.tmp"
    shift
  done
  mv "$file.tmp" "$file"
}

start_proxy() {
  local proxy=$1 dir="$BENCH_TMP/$proxy" n
  mkdir -p "$dir"
  case "$proxy" in
    switchyard)
      instances "$dir/instances.toml" up up up
      {
        switchyard_conf_head "$dir/instances.toml" "$SWITCHYARD_ADMIN_PORT"
        printf 'poll_interval = "100ms"\n\n[timeouts]\nconnect = "1s"\nrequest = "5s"\n\n'
        printf '[[listener]]\nname = "web"\nprotocol = "http"\nlisten = "127.0.0.1:%s"\n' "$SWITCHYARD_PORT"
        printf '[[listener.route]]\nservice = "bench"\n'
        printf 'retry = { attempts = 3, on = ["connect-failure", "reset", "503", "504"], per_try_timeout = "2s" }\n'
      } >"$dir/switchyard.toml"
      start_switchyard switchyard "$dir/switchyard.toml" "$SWITCHYARD_PORT" "$SWITCHYARD_ADMIN_PORT"
      PROXY_URL="http://127.0.0.1:$SWITCHYARD_PORT/"
      ;;
    nginx)
      {
        printf 'worker_processes %s;\npid %s/nginx.pid;\nerror_log %s/error.log warn;\n' "$WORKERS" "$dir" "$dir"
        printf 'events { worker_connections 8192; }\nhttp {\n    access_log off;\n'
        nginx_temp_paths "$dir"
        printf '    upstream bench {\n'
        for n in 1 2 3; do printf '        server 127.0.0.1:%s max_fails=1 fail_timeout=10s;\n' "${BACKEND_PORTS[n - 1]}"; done
        printf '        keepalive 64;\n    }\n'
        printf '    server {\n        listen 127.0.0.1:%s backlog=4096;\n        location / {\n' "$NGINX_PORT"
        printf '            proxy_pass http://bench;\n            proxy_http_version 1.1;\n'
        printf '            proxy_set_header Connection "";\n'
        printf '            proxy_next_upstream error timeout http_503;\n'
        printf '            proxy_connect_timeout 1s;\n            proxy_read_timeout 2s;\n        }\n    }\n}\n'
      } >"$dir/nginx.conf"
      start_nginx nginx "$dir/nginx.conf" proxy "$NGINX_PORT" || die "nginx did not start"
      PROXY_URL="http://127.0.0.1:$NGINX_PORT/"
      ;;
    haproxy)
      {
        printf 'global\n    nbthread %s\n    maxconn 8192\n\n' "$WORKERS"
        printf 'defaults\n    mode http\n    option http-keep-alive\n    retries 3\n    option redispatch\n'
        printf '    timeout connect 1s\n    timeout client 60s\n    timeout server 2s\n\n'
        printf 'frontend web\n    bind 127.0.0.1:%s\n    default_backend bench\n\n' "$HAPROXY_PORT"
        printf 'backend bench\n    balance roundrobin\n'
        printf '    default-server check inter 1s observe layer7 error-limit 5 on-error mark-down\n'
        for n in 1 2 3; do printf '    server b%s 127.0.0.1:%s\n' "$n" "${BACKEND_PORTS[n - 1]}"; done
      } >"$dir/haproxy.cfg"
      start_haproxy haproxy "$dir/haproxy.cfg" "$HAPROXY_PORT" || die "haproxy did not start"
      PROXY_URL="http://127.0.0.1:$HAPROXY_PORT/"
      ;;
  esac
  PROXY_PID=$BG_PID
}

# inject PROXY SCENARIO — the fault, FAULT_AT seconds into the run.
inject() {
  local proxy=$1 scenario=$2 n file="$BENCH_TMP/switchyard/instances.toml"
  case "$scenario" in
    kill9) kill -KILL "${BACKEND_PID[2]}" ;;
    hang) kill -STOP "${BACKEND_PID[2]}" ;;
    503) ;;
    rolling)
      for n in 1 2 3; do
        local s=(up up up)
        if [[ "$proxy" == switchyard ]]; then
          s[n - 1]=draining
          instances "$file" "${s[@]}"
          sleep 1 # in-flight requests finish; nothing new arrives
        fi
        stop_backend "$n"
        sleep 0.5
        start_backend "$n"
        [[ "$proxy" != switchyard ]] || instances "$file" up up up
        sleep 1
      done
      ;;
  esac
}

run_one() {
  local proxy=$1 scenario=$2 out="$BENCH_TMP/wrk-$1-$2.txt" n wrk_pid limit
  for n in 1 2 3; do
    if [[ "$scenario" == 503 && $n == 3 ]]; then start_backend "$n" 503; else start_backend "$n"; fi
  done
  start_proxy "$proxy"
  limit=$(($(duration_seconds "$DURATION") + 30))
  log "$proxy / $scenario: $CONNS connections for $DURATION, fault at ${FAULT_AT}s"
  timeout -k 5 "$limit" "${PIN_LOAD[@]}" wrk -t1 -c"$CONNS" -d"$DURATION" --timeout 5s --latency "$PROXY_URL" >"$out" 2>&1 &
  wrk_pid=$!
  sleep "$FAULT_AT"
  inject "$proxy" "$scenario"
  wait "$wrk_pid" || warn "$proxy / $scenario: wrk exited non-zero"
  if parse_wrk "$out"; then
    OUT_FAILED[$proxy/$scenario]=$WRK_ERRORS
    OUT_P99[$proxy/$scenario]=$WRK_P99
    OUT_REQS[$proxy/$scenario]="$(awk '/requests in/ {print $1}' "$out")"
    log "$proxy / $scenario: ${OUT_REQS[$proxy/$scenario]} requests, $WRK_ERRORS failed, p99 $WRK_P99 ms"
  else
    warn "$proxy / $scenario: could not parse wrk output"
    cat "$out" >&2
  fi
  stop_bg "$PROXY_PID"
  for n in 1 2 3; do stop_backend "$n"; done
}

for scenario in $SCENARIOS; do
  for proxy in $ONLY; do
    run_one "$proxy" "$scenario"
  done
done

table="| scenario | $(for p in $ONLY; do printf '%s: failed / requests, p99 | ' "$p"; done)"
table="${table% | } |"$'\n'"|---|$(for _ in $ONLY; do printf -- '---|'; done)"$'\n'
for scenario in $SCENARIOS; do
  row="| $scenario |"
  for proxy in $ONLY; do
    k="$proxy/$scenario"
    row="$row ${OUT_FAILED[$k]:-?} / ${OUT_REQS[$k]:-?}, ${OUT_P99[$k]:-?} ms |"
  done
  table="$table$row"$'\n'
done
report="# Faults: failed requests and p99 per scenario

$BENCH_DATE, $(nproc) CPUs, load average $BENCH_LOADAVG; $CONNS connections, $DURATION per run,
fault at ${FAULT_AT}s; $PIN_DESC.

$table"
printf '%s\n' "$report"
save_report faults "$report"
