#!/usr/bin/env bash
# bench/h2.sh — HTTP/2 cleartext (h2c) and gRPC: switchyard vs nginx vs HAProxy, driven by h2load.
#
# Two scenarios, each proxy in turn, the same h2load command for all:
#   h2c   GET / over h2c (prior knowledge) → 3 static nginx backends.
#         Upstream leg: switchyard and HAProxy speak h2c to h2c backend ports;
#         nginx's proxy_pass cannot speak HTTP/2 upstream, so it uses HTTP/1.1
#         keep-alive to HTTP/1.1 ports of the same backend nginx (noted in the table).
#   grpc  unary gRPC (POST /bench.Echo/Unary, 19-byte frame) → 3 tonic backends
#         (examples/grpc_echo.rs); every proxy speaks h2c upstream (nginx: grpc_pass).
# Every proxy balances round-robin per request. Before measuring, a request through
# each proxy must succeed (for gRPC: grpc-status 0 in the trailers), else its row says FAILED.
#
# h2load reports mean/sd/max latency, not percentiles, so the table shows those.
# h2load counts HTTP 2xx as success; a gRPC error is also HTTP 200, which is why the
# gRPC sanity check reads grpc-status.
#
# Knobs (environment):
#   WORKERS=1            worker threads/processes per proxy
#   CONNS=16 STREAMS=32  h2load -c / -m (concurrent streams per connection)
#   DURATION=10 WARMUP=2 seconds
#   SCENARIOS="h2c grpc" ONLY="switchyard nginx haproxy"
#   SWITCHYARD=target/release/switchyard   GRPC_ECHO=target/release/examples/grpc_echo
#   PROXY_CPUS / LOAD_CPUS  (see lib.sh)   KEEP_TMP=1
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=bench/lib.sh
. "$BENCH_DIR/lib.sh"

WORKERS=${WORKERS:-1}
CONNS=${CONNS:-16}
STREAMS=${STREAMS:-32}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
SCENARIOS=${SCENARIOS:-"h2c grpc"}
ONLY=${ONLY:-"switchyard nginx haproxy"}

H1_PORTS=(19201 19202 19203)   # backend nginx, HTTP/1.1
H2_PORTS=(19211 19212 19213)   # backend nginx, h2c
GRPC_PORTS=(19221 19222 19223) # grpc_echo
SY_PORT=18280
SY_ADMIN=19290
NGINX_PORT=18281
HAPROXY_PORT=18282

declare -A H2_RPS=() H2_MEAN=() H2_SD=() H2_MAX=() H2_FAIL=() H2_NOTE=()

validate_knobs() {
  local v
  for v in WORKERS CONNS STREAMS DURATION WARMUP; do
    [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer (got '${!v}')"
  done
  for v in $SCENARIOS; do [[ "$v" == h2c || "$v" == grpc ]] || die "SCENARIOS: unknown '$v'"; done
  for v in $ONLY; do [[ "$v" =~ ^(switchyard|nginx|haproxy)$ ]] || die "ONLY: unknown proxy '$v'"; done
}

ensure_grpc_echo() {
  GRPC_ECHO_BIN=${GRPC_ECHO:-$REPO_ROOT/target/release/examples/grpc_echo}
  if [[ ! -x "$GRPC_ECHO_BIN" ]]; then
    log "building examples/grpc_echo (release)"
    (cd "$REPO_ROOT" && cargo build --release --example grpc_echo) >&2 || die "could not build grpc_echo"
  fi
}

# ---- backends -------------------------------------------------------------------------

write_backend_conf() {
  local dir=$1 i
  printf 'worker_processes 1;\npid %s/nginx.pid;\nerror_log %s/error.log warn;\n' "$dir" "$dir"
  printf 'events { worker_connections 8192; }\nhttp {\n    access_log off;\n'
  printf '    keepalive_requests 1000000;\n    http2_max_concurrent_streams 1024;\n'
  nginx_temp_paths "$dir"
  for i in 0 1 2; do
    printf '    server { listen 127.0.0.1:%s; listen 127.0.0.1:%s http2; location / { return 200 "backend-%s\\n"; } }\n' \
      "${H1_PORTS[i]}" "${H2_PORTS[i]}" "$((i + 1))"
  done
  printf '}\n'
}

start_backends() {
  local dir="$BENCH_TMP/backends" i p
  mkdir -p "$dir"
  write_backend_conf "$dir" >"$dir/nginx.conf"
  start_nginx backends "$dir/nginx.conf" load "${H1_PORTS[0]}" || die "backend nginx did not start"
  for p in "${H1_PORTS[@]}" "${H2_PORTS[@]}"; do wait_for_port "$p" "$BG_PID" 5 || die "backend port $p"; done
  if [[ " $SCENARIOS " == *" grpc "* ]]; then
    for i in 0 1 2; do
      start_bg "grpc-echo-$((i + 1))" load "$GRPC_ECHO_BIN" "127.0.0.1:${GRPC_PORTS[i]}"
      wait_for_port "${GRPC_PORTS[i]}" "$BG_PID" 5 || die "grpc_echo on ${GRPC_PORTS[i]} did not start"
    done
  fi
}

# ---- proxy configs ------------------------------------------------------------------------

upstream_ports() { # SCENARIO PROXY
  case "$1:$2" in
    h2c:nginx) echo "${H1_PORTS[*]}" ;;
    h2c:*) echo "${H2_PORTS[*]}" ;;
    grpc:*) echo "${GRPC_PORTS[*]}" ;;
  esac
}

write_nginx_conf() { # SCENARIO FILE
  local scenario=$1 file=$2 prefix p pass
  prefix="$(dirname "$file")"
  if [[ $scenario == grpc ]]; then
    pass='grpc_pass grpc://up;'
  else
    pass='proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection "";'
  fi
  {
    printf 'worker_processes %s;\npid %s/nginx.pid;\nerror_log %s/error.log warn;\n' "$WORKERS" "$prefix" "$prefix"
    printf 'events { worker_connections 8192; }\nhttp {\n    access_log off;\n'
    printf '    http2_max_concurrent_streams 1024;\n    keepalive_requests 1000000;\n'
    nginx_temp_paths "$prefix"
    printf '    upstream up {\n'
    for p in $(upstream_ports "$scenario" nginx); do printf '        server 127.0.0.1:%s;\n' "$p"; done
    printf '        keepalive 64;\n        keepalive_requests 1000000;\n    }\n'
    # nginx 1.22: `listen ... http2` without ssl is h2c with prior knowledge (`http2 on;` is 1.25+).
    printf '    server {\n        listen 127.0.0.1:%s http2 backlog=4096;\n        location / { %s }\n    }\n}\n' "$NGINX_PORT" "$pass"
  } >"$file"
}

write_haproxy_conf() { # SCENARIO FILE
  local scenario=$1 file=$2 n=0 p
  {
    printf 'global\n    nbthread %s\n    maxconn 8192\n' "$WORKERS"
    printf 'defaults\n    mode http\n    http-reuse always\n    timeout connect 5s\n    timeout client 60s\n    timeout server 60s\n'
    printf 'frontend h2\n    bind 127.0.0.1:%s proto h2\n    default_backend up\n' "$HAPROXY_PORT"
    printf 'backend up\n    balance roundrobin\n'
    for p in $(upstream_ports "$scenario" haproxy); do
      n=$((n + 1))
      printf '    server b%s 127.0.0.1:%s proto h2\n' "$n" "$p"
    done
  } >"$file"
}

write_switchyard_conf() { # SCENARIO FILE
  local scenario=$1 file=$2 dir p n=0 route
  dir="$(dirname "$file")"
  : >"$dir/instances.toml"
  for p in $(upstream_ports "$scenario" switchyard); do
    n=$((n + 1))
    printf '[[instance]]\nservice = "up"\nid = "b%s"\naddr = "127.0.0.1:%s"\nmetadata = { protocol = "h2c" }\n\n' \
      "$n" "$p" >>"$dir/instances.toml"
  done
  if [[ $scenario == grpc ]]; then route='grpc_service = "bench.Echo"'; else route='path_prefix = "/"'; fi
  {
    switchyard_conf_head "$dir/instances.toml" "$SY_ADMIN"
    printf '[[listener]]\nname = "h2"\nprotocol = "http"\nlisten = "127.0.0.1:%s"\n' "$SY_PORT"
    printf '[[listener.route]]\n%s\nservice = "up"\nbalance = "round_robin"\n' "$route"
  } >"$file"
}

# ---- measuring ------------------------------------------------------------------------------

sanity() { # SCENARIO PORT → 0 if a request through the proxy is answered correctly
  local scenario=$1 port=$2 out
  if [[ $scenario == grpc ]]; then
    # curl prints HTTP/2 trailers with the headers: grpc-status must be 0.
    out="$(curl -s --max-time 5 --http2-prior-knowledge -D - -o /dev/null --data-binary "@$BENCH_TMP/grpc-request.bin" \
      -H 'content-type: application/grpc' -H 'te: trailers' "http://127.0.0.1:$port/bench.Echo/Unary" || true)"
    grep -qi '^grpc-status: 0' <<<"$out" || { warn "gRPC sanity check failed: $out"; return 1; }
  else
    out="$(curl -s --max-time 5 --http2-prior-knowledge "http://127.0.0.1:$port/" || true)"
    [[ "$out" == backend-* ]] || { warn "h2c sanity check failed: '$out'"; return 1; }
  fi
}

run_h2load() { # NAME SCENARIO PORT
  local name=$1 scenario=$2 port=$3 out rps mean sd max failed
  local -a args=(-t 1 -c "$CONNS" -m "$STREAMS" -D "$DURATION" --warm-up-time="$WARMUP")
  if [[ $scenario == grpc ]]; then
    args+=(-d "$BENCH_TMP/grpc-request.bin" -H 'content-type: application/grpc' -H 'te: trailers'
      "http://127.0.0.1:$port/bench.Echo/Unary")
  else
    args+=("http://127.0.0.1:$port/")
  fi
  out="$(pin_load h2load "${args[@]}" 2>&1)" || { warn "h2load failed: $out"; return 1; }
  printf '%s\n' "$out" >"$BENCH_TMP/${name/\//-}.h2load.txt"
  rps="$(awk '/^finished in/ { print $4 }' <<<"$out")"
  failed="$(awk '/^requests:/ { print $10 }' <<<"$out")"
  read -r max mean sd < <(awk '/^time for request:/ { print $5, $6, $7 }' <<<"$out")
  [[ -n "$rps" && -n "${mean:-}" ]] || { warn "could not parse h2load output: $out"; return 1; }
  H2_RPS[$name]=$rps
  H2_MEAN[$name]=$(to_ms "$mean")
  H2_SD[$name]=$(to_ms "$sd")
  H2_MAX[$name]=$(to_ms "$max")
  H2_FAIL[$name]=$failed
}

bench_one() { # SCENARIO PROXY
  local scenario=$1 proxy=$2 name="$1/$2" dir="$BENCH_TMP/$1-$2" port pid
  mkdir -p "$dir"
  case "$proxy" in
    nginx)
      port=$NGINX_PORT
      write_nginx_conf "$scenario" "$dir/nginx.conf"
      start_nginx "$scenario-nginx" "$dir/nginx.conf" proxy "$port" || return 1
      ;;
    haproxy)
      port=$HAPROXY_PORT
      write_haproxy_conf "$scenario" "$dir/haproxy.cfg"
      start_haproxy "$scenario-haproxy" "$dir/haproxy.cfg" "$port" || return 1
      ;;
    switchyard)
      port=$SY_PORT
      write_switchyard_conf "$scenario" "$dir/switchyard.toml"
      start_switchyard "$scenario-switchyard" "$dir/switchyard.toml" "$port" "$SY_ADMIN" || return 1
      ;;
  esac
  pid=$BG_PID
  if ! sanity "$scenario" "$port"; then stop_bg "$pid"; return 1; fi
  if ! run_h2load "$name" "$scenario" "$port"; then stop_bg "$pid"; return 1; fi
  kill -0 "$pid" 2>/dev/null || { warn "$name exited during the run"; return 1; }
  stop_bg "$pid"
  sleep 1
}

ratio() { awk -v a="$1" -v b="${2:-0}" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "n/a" }'; }

table() { # SCENARIO
  local s=$1 p n
  printf '| %s | requests/s | mean (ms) | sd (ms) | max (ms) | req/s vs nginx | req/s vs HAProxy | failed |\n' "$s"
  printf '|---|---:|---:|---:|---:|---:|---:|---:|\n'
  for p in $ONLY; do
    n="$s/$p"
    if [[ -z "${H2_RPS[$n]:-}" ]]; then
      printf '| %s | — | — | — | — | — | — | **FAILED** |\n' "$p"
      continue
    fi
    printf '| %s%s | %.0f | %.2f | %.2f | %.2f | %s | %s | %s |\n' "$p" "${H2_NOTE[$n]:-}" "${H2_RPS[$n]}" \
      "${H2_MEAN[$n]}" "${H2_SD[$n]}" "${H2_MAX[$n]}" \
      "$(ratio "${H2_RPS[$n]}" "${H2_RPS[$s/nginx]:-}")" "$(ratio "${H2_RPS[$n]}" "${H2_RPS[$s/haproxy]:-}")" "${H2_FAIL[$n]}"
  done
  printf '\n'
}

main() {
  validate_knobs
  require_tool h2load nghttp2-client
  require_tool nginx nginx
  require_tool curl curl
  [[ " $ONLY " != *" haproxy "* ]] || require_tool haproxy haproxy
  bench_init h2
  port_free_or_die "${H1_PORTS[@]}" "${H2_PORTS[@]}" "${GRPC_PORTS[@]}" "$SY_PORT" "$SY_ADMIN" "$NGINX_PORT" "$HAPROXY_PORT"
  [[ " $ONLY " != *" switchyard "* ]] || ensure_switchyard || die "switchyard binary unavailable"
  [[ " $SCENARIOS " != *" grpc "* ]] || ensure_grpc_echo
  # One gRPC frame: uncompressed, 14-byte protobuf message (field 1 = "hello h2load").
  printf '\x00\x00\x00\x00\x0e\x0a\x0chello h2load' >"$BENCH_TMP/grpc-request.bin"
  start_backends

  local s p
  for s in $SCENARIOS; do
    for p in $ONLY; do
      log "=== $s: $p ==="
      [[ $s/$p != h2c/nginx ]] || H2_NOTE[h2c/nginx]=" (HTTP/1.1 upstream)"
      bench_one "$s" "$p" || warn "$s/$p failed"
    done
  done

  local settings versions report
  settings="WORKERS=$WORKERS; \`h2load -t1 -c$CONNS -m$STREAMS -D $DURATION --warm-up-time=$WARMUP\`; round-robin over 3 backends"
  versions="nginx $(nginx -v 2>&1 | sed 's|.*nginx/||'), HAProxy $(haproxy -v 2>/dev/null | awk 'NR == 1 {print $3}'), $(h2load --version | head -1)"
  report="$(
    report_header "h2c and gRPC: switchyard vs nginx vs HAProxy (h2load)" "$settings" "$versions"
    for s in $SCENARIOS; do table "$s"; done
  )"
  printf '\n%s\n' "$report"
  save_report h2 "$report"
}

main "$@"
