#!/usr/bin/env bash
# bench/http.sh — HTTP/1.1 keep-alive: switchyard vs nginx vs HAProxy.
#
# All three proxies sit in front of the same three static nginx backends, use the same
# number of worker threads, keep upstream connections alive, balance round-robin, and
# are driven one after the other by the same wrk command. Prints a Markdown table
# (requests/s, p50, p99, ratios to nginx, errors) and saves it in bench/results/.
#
# Knobs (environment):
#   WORKERS=1        worker threads/processes for every proxy
#   CONNS=64         wrk connections
#   DURATION=10s     measured wrk run per proxy (after a WARMUP=2s run)
#   ONLY="switchyard nginx haproxy"   which proxies to run, in that order
#   ROUNDS=1         repeat the whole sequence, interleaved; the table shows medians
#   SWITCHYARD=target/release/switchyard   binary (built with cargo if missing)
#   PROXY_CPUS / LOAD_CPUS   taskset CPU lists (default: proxy 1, wrk+backends 0)
#   KEEP_TMP=1       keep the temp dir (configs, logs, raw wrk output) for inspection
#
# Usage: bench/http.sh            ONLY="nginx haproxy" DURATION=5s bench/http.sh
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=bench/lib.sh
. "$BENCH_DIR/lib.sh"

WORKERS=${WORKERS:-1}
CONNS=${CONNS:-64}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
ONLY=${ONLY:-"switchyard nginx haproxy"}
ROUNDS=${ROUNDS:-1}

# Ports, all on 127.0.0.1.
BACKEND_PORTS=(19001 19002 19003)
SWITCHYARD_PORT=18080
SWITCHYARD_ADMIN_PORT=19901
NGINX_PORT=18081
HAPROXY_PORT=18082

UPSTREAM_KEEPALIVE=64

validate_knobs() {
  [[ "$WORKERS" =~ ^[1-9][0-9]*$ ]] || die "WORKERS must be a positive integer (got '$WORKERS')"
  [[ "$CONNS" =~ ^[1-9][0-9]*$ ]] || die "CONNS must be a positive integer (got '$CONNS')"
  [[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer (got '$ROUNDS')"
  duration_seconds "$DURATION" >/dev/null
  duration_seconds "$WARMUP" >/dev/null
  local p
  for p in $ONLY; do
    case "$p" in
      switchyard | nginx | haproxy) ;;
      *) die "ONLY: unknown proxy '$p' (known: switchyard nginx haproxy)" ;;
    esac
  done
  [[ -n "${ONLY// /}" ]] || die "ONLY is empty"
}

check_tools() {
  require_tool nginx nginx
  require_tool wrk wrk
  require_tool curl curl
  require_tool timeout coreutils
  [[ " $ONLY " != *" haproxy "* ]] || require_tool haproxy haproxy
}

backend_addrs() {
  local p
  for p in "${BACKEND_PORTS[@]}"; do printf '127.0.0.1:%s\n' "$p"; done
}

start_backends() {
  local dir="$BENCH_TMP/backends" p urls=()
  mkdir -p "$dir"
  write_backends_conf "$dir/nginx.conf" "${BACKEND_PORTS[@]}"
  start_nginx backends "$dir/nginx.conf" load "${BACKEND_PORTS[0]}" || die "could not start the backend nginx"
  for p in "${BACKEND_PORTS[@]}"; do
    wait_for_port "$p" "$BG_PID" 5 || die "backend port $p did not open"
    urls+=("http://127.0.0.1:$p/")
  done
  check_backends "${urls[@]}"
  log "backends up on ports ${BACKEND_PORTS[*]}"
}

# ---- proxy configs -----------------------------------------------------------------

write_nginx_conf() {
  local file=$1 prefix a
  prefix="$(dirname "$file")"
  {
    cat <<EOF
worker_processes $WORKERS;
pid $prefix/nginx.pid;
error_log $prefix/error.log warn;
events { worker_connections 8192; }
http {
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
$(nginx_temp_paths "$prefix")
    upstream bench {
EOF
    while read -r a; do printf '        server %s;\n' "$a"; done < <(backend_addrs)
    cat <<EOF
        keepalive $UPSTREAM_KEEPALIVE;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT backlog=4096;
        location / {
            proxy_pass http://bench;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
  } >"$file"
}

write_haproxy_conf() {
  local file=$1 n=0 a
  {
    cat <<EOF
global
    nbthread $WORKERS
    maxconn 8192

defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s

frontend web
    bind 127.0.0.1:$HAPROXY_PORT
    default_backend bench

backend bench
    balance roundrobin
EOF
    while read -r a; do
      n=$((n + 1))
      printf '    server b%s %s\n' "$n" "$a"
    done < <(backend_addrs)
  } >"$file"
}

write_switchyard_conf() {
  local file=$1 dir
  dir="$(dirname "$file")"
  # shellcheck disable=SC2046
  write_instances_file "$dir/instances.toml" bench $(backend_addrs)
  {
    switchyard_conf_head "$dir/instances.toml" "$SWITCHYARD_ADMIN_PORT"
    cat <<EOF
[[listener]]
name = "web"
protocol = "http"
listen = "127.0.0.1:$SWITCHYARD_PORT"

[[listener.route]]
path_prefix = "/"
service = "bench"
balance = "round_robin"
EOF
  } >"$file"
}

# ---- one proxy: start, sanity-check, measure, stop -----------------------------------

# bench_proxy NAME — returns 1 (with a reason in FAIL_REASON) if it cannot be measured.
bench_proxy() {
  local name=$1 dir="$BENCH_TMP/$1" port
  mkdir -p "$dir"
  FAIL_REASON=""
  case "$name" in
    nginx)
      port=$NGINX_PORT
      write_nginx_conf "$dir/nginx.conf"
      start_nginx nginx "$dir/nginx.conf" proxy "$port" || { FAIL_REASON="did not start"; return 1; }
      ;;
    haproxy)
      port=$HAPROXY_PORT
      write_haproxy_conf "$dir/haproxy.cfg"
      start_haproxy haproxy "$dir/haproxy.cfg" "$port" || { FAIL_REASON="did not start"; return 1; }
      ;;
    switchyard)
      port=$SWITCHYARD_PORT
      write_switchyard_conf "$dir/switchyard.toml"
      if ! ensure_switchyard; then
        FAIL_REASON="binary ${SWITCHYARD:-target/release/switchyard} missing and could not be built"
        return 1
      fi
      if ! start_switchyard switchyard "$dir/switchyard.toml" "$port" "$SWITCHYARD_ADMIN_PORT"; then
        FAIL_REASON="did not start or not ready (/readyz) within 10 s"
        return 1
      fi
      ;;
  esac
  local pid=$BG_PID url="http://127.0.0.1:$port/"
  if ! check_round_robin "$url" 6; then
    FAIL_REASON="sanity requests through the proxy failed"
    show_log "$name"
    stop_bg "$pid"
    return 1
  fi
  if [[ "$(wc -w <<<"$ROUND_ROBIN_SEEN")" -ne "${#BACKEND_PORTS[@]}" ]]; then
    warn "$name: 6 requests reached only: $ROUND_ROBIN_SEEN (expected all ${#BACKEND_PORTS[@]} backends)"
  fi
  if ! run_wrk "$name" "$url"; then
    FAIL_REASON="wrk run failed"
    stop_bg "$pid"
    return 1
  fi
  if ! kill -0 "$pid" 2>/dev/null; then
    # Numbers from a proxy that crashed during the run are not worth a row.
    FAIL_REASON="process exited during the run"
    show_log "$name"
    return 1
  fi
  stop_bg "$pid"
  sleep 1 # let sockets settle before the next proxy
}

versions_line() {
  local v=() sy
  v+=("nginx $(nginx -v 2>&1 | sed 's|.*nginx/||')")
  if [[ " $ONLY " == *" haproxy "* ]]; then
    v+=("HAProxy $(haproxy -v 2>/dev/null | awk 'NR == 1 {print $3}')")
  fi
  v+=("wrk $(wrk -v 2>&1 | awk 'NR == 1 {print $2}')")
  if [[ " $ONLY " == *" switchyard "* && -n "${SWITCHYARD_BIN:-}" ]]; then
    sy="$(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo 'no commit')"
    if [[ -n "$(git -C "$REPO_ROOT" status --porcelain -- src Cargo.toml 2>/dev/null)" ]]; then sy+="+dirty"; fi
    v+=("switchyard $sy (binary ${SWITCHYARD_BIN#"$REPO_ROOT"/} built $(date -r "$SWITCHYARD_BIN" '+%F %T'))")
  fi
  local joined
  joined="$(printf '%s, ' "${v[@]}")"
  echo "${joined%, }"
}

main() {
  validate_knobs
  check_tools
  bench_init http

  local ports=("${BACKEND_PORTS[@]}") p
  for p in $ONLY; do
    case "$p" in
      switchyard) ports+=("$SWITCHYARD_PORT" "$SWITCHYARD_ADMIN_PORT") ;;
      nginx) ports+=("$NGINX_PORT") ;;
      haproxy) ports+=("$HAPROXY_PORT") ;;
    esac
  done
  port_free_or_die "${ports[@]}"

  if [[ " $ONLY " == *" switchyard "* ]]; then
    # Resolve (and if needed build) before any timing starts.
    ensure_switchyard || warn "switchyard binary unavailable; its row will say FAILED"
  fi
  if [[ -n "${PROXY_CPUS:-}" && "$PROXY_CPUS" =~ ^[0-9]+$ && "$WORKERS" -gt 1 ]]; then
    warn "WORKERS=$WORKERS but the proxies are pinned to the single CPU $PROXY_CPUS"
  fi

  start_backends

  local round
  for ((round = 1; round <= ROUNDS; round++)); do
    for p in $ONLY; do
      [[ -z "${RES_FAILED[$p]:-}" ]] || continue # failed once: not retried
      log "=== $p (round $round/$ROUNDS) ==="
      bench_proxy "$p" || record_failure "$p" "$FAIL_REASON"
    done
  done

  local settings report
  settings="WORKERS=$WORKERS (nginx worker_processes, haproxy nbthread, switchyard [runtime] workers);"
  settings+=" \`wrk -t${WRK_THREADS:-1} -c$CONNS -d$DURATION --latency\` after a $WARMUP warm-up, ROUNDS=$ROUNDS;"
  settings+=" HTTP/1.1 keep-alive, GET / → 3 static nginx backends, round-robin, upstream keep-alive"
  report="$(
    report_header "HTTP/1.1 keep-alive: switchyard vs nginx vs HAProxy" "$settings" "$(versions_line)"
    report_table nginx
  )"
  printf '\n%s\n' "$report"
  save_report http "$report"
  if any_failed; then
    warn "at least one proxy failed or returned errors (see the table)"
    exit 1
  fi
}

main "$@"
