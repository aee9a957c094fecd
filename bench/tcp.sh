#!/usr/bin/env bash
# bench/tcp.sh — L4 TCP throughput: switchyard vs nginx (stream) vs HAProxy (mode tcp).
#
# One iperf3 server is the backend of all three proxies. For each proxy in turn,
# iperf3 moves a fixed number of bytes through it in three runs — one stream
# client→server ("upload"), one stream server→client ("download", -R), and
# PARALLEL streams client→server — and the receiver's rate is recorded. A direct
# run (no proxy) is measured too, as the ceiling of this machine. Prints a Markdown
# table (Gbit/s per run, ratios to nginx) and saves it in bench/results/.
#
# iperf3 opens a control connection and then data connections to the same port, so
# every connection must reach the same backend: one backend instance, for all proxies.
# Each proxy runs with its shipped buffer sizes (switchyard 32 KiB per direction,
# nginx proxy_buffer_size 16k, HAProxy bufsize 16k, no splicing).
#
# Knobs (environment):
#   WORKERS=1        worker threads/processes for every proxy
#   SIZE=2G          bytes per run (iperf3 -n: K, M, G suffixes)
#   PARALLEL=4       streams in the parallel run
#   ONLY="direct switchyard nginx haproxy"   which rows to run, in that order
#   ROUNDS=1         repeat the whole sequence, interleaved; the table shows medians
#   SWITCHYARD=target/release/switchyard   binary (built with cargo if missing)
#   PROXY_CPUS / LOAD_CPUS   taskset CPU lists (default: proxy 1, iperf3 both ends 0)
#   KEEP_TMP=1       keep the temp dir (configs, logs, raw iperf3 JSON)
#
# Requirements: apt-get install -y iperf3 nginx libnginx-mod-stream haproxy python3
#
# Usage: bench/tcp.sh            SIZE=512M ONLY="direct switchyard" bench/tcp.sh
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=bench/lib.sh
. "$BENCH_DIR/lib.sh"

WORKERS=${WORKERS:-1}
SIZE=${SIZE:-2G}
PARALLEL=${PARALLEL:-4}
ONLY=${ONLY:-"direct switchyard nginx haproxy"}
ROUNDS=${ROUNDS:-1}

# Ports, all on 127.0.0.1.
BACKEND_PORT=19101
SWITCHYARD_PORT=18180
SWITCHYARD_ADMIN_PORT=19911
NGINX_PORT=18181
HAPROXY_PORT=18182

NGINX_STREAM_MODULE=${NGINX_STREAM_MODULE:-/usr/lib/nginx/modules/ngx_stream_module.so}
RUNS=(upload download parallel)

validate_knobs() {
  [[ "$WORKERS" =~ ^[1-9][0-9]*$ ]] || die "WORKERS must be a positive integer (got '$WORKERS')"
  [[ "$PARALLEL" =~ ^[1-9][0-9]*$ ]] || die "PARALLEL must be a positive integer (got '$PARALLEL')"
  [[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer (got '$ROUNDS')"
  [[ "$SIZE" =~ ^[1-9][0-9]*[KMG]?$ ]] || die "SIZE must be like 512M or 2G (got '$SIZE')"
  local p
  for p in $ONLY; do
    case "$p" in
      direct | switchyard | nginx | haproxy) ;;
      *) die "ONLY: unknown row '$p' (known: direct switchyard nginx haproxy)" ;;
    esac
  done
  [[ -n "${ONLY// /}" ]] || die "ONLY is empty"
}

check_tools() {
  require_tool iperf3 iperf3
  require_tool python3 python3
  require_tool timeout coreutils
  if [[ " $ONLY " == *" nginx "* ]]; then
    require_tool nginx nginx
    [[ -r "$NGINX_STREAM_MODULE" ]] || die "nginx stream module not found at $NGINX_STREAM_MODULE. Fix: apt-get install -y libnginx-mod-stream"
  fi
  [[ " $ONLY " != *" haproxy "* ]] || require_tool haproxy haproxy
}

# ---- proxy configs -----------------------------------------------------------------

write_nginx_conf() {
  local file=$1 prefix
  prefix="$(dirname "$file")"
  cat >"$file" <<EOF
load_module $NGINX_STREAM_MODULE;
worker_processes $WORKERS;
pid $prefix/nginx.pid;
error_log $prefix/error.log warn;
events { worker_connections 8192; }
stream {
    upstream iperf { server 127.0.0.1:$BACKEND_PORT; }
    server {
        listen 127.0.0.1:$NGINX_PORT backlog=4096;
        proxy_pass iperf;
        proxy_connect_timeout 5s;
        proxy_timeout 60s;
    }
}
EOF
}

write_haproxy_conf() {
  cat >"$1" <<EOF
global
    nbthread $WORKERS
    maxconn 8192

defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s

frontend l4
    bind 127.0.0.1:$HAPROXY_PORT
    default_backend iperf

backend iperf
    server b1 127.0.0.1:$BACKEND_PORT
EOF
}

write_switchyard_conf() {
  local file=$1 dir
  dir="$(dirname "$file")"
  write_instances_file "$dir/instances.toml" iperf "127.0.0.1:$BACKEND_PORT"
  {
    switchyard_conf_head "$dir/instances.toml" "$SWITCHYARD_ADMIN_PORT"
    cat <<EOF
[[listener]]
name = "l4"
protocol = "tcp"
listen = "127.0.0.1:$SWITCHYARD_PORT"
service = "iperf"
EOF
  } >"$file"
}

# ---- measuring ---------------------------------------------------------------------

declare -A GBPS_ALL=() FAILED=()
ROWS=()

# iperf_run ROW RUN PORT — one bounded iperf3 client run; records Gbit/s (receiver side).
iperf_run() {
  local row=$1 run=$2 port=$3 out="$BENCH_TMP/iperf-$1-$2-$RANDOM.json" args=() gbps
  case "$run" in
    upload) args=() ;;
    download) args=(-R) ;;
    parallel) args=(-P "$PARALLEL") ;;
  esac
  # Generous bound: 2 GB at 0.1 Gbit/s would take 160 s.
  if ! timeout -k 5 300 "${PIN_LOAD[@]}" iperf3 -c 127.0.0.1 -p "$port" -n "$SIZE" -J "${args[@]}" >"$out" 2>&1; then
    warn "$row/$run: iperf3 failed"
    python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("error", "?"))' "$out" >&2 2>/dev/null || tail -n 5 "$out" >&2
    return 1
  fi
  gbps="$(python3 -c 'import json,sys; print("%.3f" % (json.load(open(sys.argv[1]))["end"]["sum_received"]["bits_per_second"] / 1e9))' "$out")" \
    || { warn "$row/$run: cannot read iperf3 output"; return 1; }
  GBPS_ALL["$row/$run"]="${GBPS_ALL["$row/$run"]:-} $gbps"
  log "$row/$run: $gbps Gbit/s"
}

# bench_row NAME — start the proxy (none for "direct"), three runs, stop it.
bench_row() {
  local name=$1 dir="$BENCH_TMP/$1" port pid="" run
  mkdir -p "$dir"
  [[ " ${ROWS[*]} " == *" $name "* ]] || ROWS+=("$name")
  case "$name" in
    direct) port=$BACKEND_PORT ;;
    nginx)
      port=$NGINX_PORT
      write_nginx_conf "$dir/nginx.conf"
      start_nginx nginx "$dir/nginx.conf" proxy "$port" || { FAILED[$name]="did not start"; return 1; }
      pid=$BG_PID
      ;;
    haproxy)
      port=$HAPROXY_PORT
      write_haproxy_conf "$dir/haproxy.cfg"
      start_haproxy haproxy "$dir/haproxy.cfg" "$port" || { FAILED[$name]="did not start"; return 1; }
      pid=$BG_PID
      ;;
    switchyard)
      port=$SWITCHYARD_PORT
      write_switchyard_conf "$dir/switchyard.toml"
      ensure_switchyard || { FAILED[$name]="binary missing and could not be built"; return 1; }
      start_switchyard switchyard "$dir/switchyard.toml" "$port" "$SWITCHYARD_ADMIN_PORT" \
        || { FAILED[$name]="did not start or not ready"; return 1; }
      pid=$BG_PID
      ;;
  esac
  for run in "${RUNS[@]}"; do
    iperf_run "$name" "$run" "$port" || FAILED[$name]="${FAILED[$name]:+${FAILED[$name]}; }$run failed"
    if [[ -n "$pid" ]] && ! kill -0 "$pid" 2>/dev/null; then
      FAILED[$name]="process exited during the run"
      show_log "$name"
      return 1
    fi
  done
  [[ -z "$pid" ]] || stop_bg "$pid"
  sleep 1 # let sockets settle before the next proxy
}

report() {
  local row run cell base
  printf '| path |'
  for run in "${RUNS[@]}"; do printf ' %s Gbit/s |' "$run"; done
  for run in "${RUNS[@]}"; do printf ' %s vs nginx |' "$run"; done
  printf ' notes |\n|---|'
  for run in "${RUNS[@]}"; do printf -- '---:|---:|'; done
  printf -- '---|\n'
  for row in "${ROWS[@]}"; do
    printf '| %s |' "$row"
    for run in "${RUNS[@]}"; do
      cell="$(median "${GBPS_ALL["$row/$run"]:-}")"
      printf ' %s |' "$cell"
    done
    for run in "${RUNS[@]}"; do
      cell="$(median "${GBPS_ALL["$row/$run"]:-}")"
      base="$(median "${GBPS_ALL["nginx/$run"]:-}")"
      awk -v a="$cell" -v b="$base" 'BEGIN { if (a != "nan" && b != "nan" && b > 0) printf " %.2fx |", a / b; else printf " n/a |" }'
    done
    if [[ -n "${FAILED[$row]:-}" ]]; then printf ' **FAILED**: %s |\n' "${FAILED[$row]}"; else printf ' |\n'; fi
  done
  if ((ROUNDS > 1)); then printf '\nMedians over %s rounds.\n' "$ROUNDS"; fi
  printf '\n"direct" is iperf3 without a proxy: the ceiling of this machine with this pinning.\n'
}

versions_line() {
  local v=()
  v+=("iperf3 $(iperf3 -v 2>/dev/null | awk 'NR == 1 {print $2}')")
  [[ " $ONLY " != *" nginx "* ]] || v+=("nginx $(nginx -v 2>&1 | sed 's|.*nginx/||')")
  [[ " $ONLY " != *" haproxy "* ]] || v+=("HAProxy $(haproxy -v 2>/dev/null | awk 'NR == 1 {print $3}')")
  if [[ -n "${SWITCHYARD_BIN:-}" ]]; then
    local sy
    sy="$(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo 'no commit')"
    if [[ -n "$(git -C "$REPO_ROOT" status --porcelain -- src Cargo.toml 2>/dev/null)" ]]; then sy+="+dirty"; fi
    v+=("switchyard $sy")
  fi
  local joined
  joined="$(printf '%s, ' "${v[@]}")"
  echo "${joined%, }"
}

main() {
  validate_knobs
  check_tools
  bench_init tcp

  local ports=("$BACKEND_PORT") p round
  for p in $ONLY; do
    case "$p" in
      switchyard) ports+=("$SWITCHYARD_PORT" "$SWITCHYARD_ADMIN_PORT") ;;
      nginx) ports+=("$NGINX_PORT") ;;
      haproxy) ports+=("$HAPROXY_PORT") ;;
    esac
  done
  port_free_or_die "${ports[@]}"
  if [[ " $ONLY " == *" switchyard "* ]]; then ensure_switchyard || warn "switchyard unavailable: its row will fail"; fi

  start_bg backend load iperf3 -s -p "$BACKEND_PORT" -B 127.0.0.1
  wait_for_port "$BACKEND_PORT" "$BG_PID" 5 || die "iperf3 server did not start"

  for ((round = 1; round <= ROUNDS; round++)); do
    ((ROUNDS == 1)) || log "round $round/$ROUNDS"
    for p in $ONLY; do
      bench_row "$p" || warn "$p: ${FAILED[$p]:-failed}"
    done
  done

  local text
  text="$(
    report_header "TCP throughput (L4)" \
      "workers=$WORKERS, $SIZE per run, parallel run with $PARALLEL streams, rounds=$ROUNDS, one iperf3 backend" \
      "$(versions_line)"
    report
  )"
  printf '%s\n' "$text"
  save_report tcp "$text"
}

main "$@"
