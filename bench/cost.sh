#!/usr/bin/env bash
# bench/cost.sh — what one proxied request COSTS in switchyard, nginx and HAProxy, as
# figures that do not swing with the load of a shared machine (req/s does, ±20 % run to
# run), printed side by side with ratios.
#
# Same work for all three: one worker each (nginx worker_processes 1 + upstream keepalive,
# HAProxy nbthread 1 + http-reuse always, switchyard [runtime] workers = 1), round-robin
# over three static nginx backends (`return 200 "ok from PORT\n"`, keep-alive), HTTP/1.1
# upstream in every case (also behind h2c). Proxy pinned to PROXY_CPUS, client and
# backends to LOAD_CPUS (bench/lib.sh). The backends' stub_status counts the requests
# that really reached them.
# PROTO=grpc: unary gRPC (POST /bench.Echo/Unary, one 19-byte frame, h2load with
# H2_CONNS × H2_STREAMS) to three tonic backends (examples/grpc_echo.rs, built if
# missing; GRPC_ECHO names another binary), h2c upstream in every case: nginx
# `grpc_pass` with upstream keepalive, HAProxy `proto h2`, switchyard h2c instances
# routed by `grpc_service`. Each proxy must answer grpc-status 0 before it is measured;
# `cpu` divides by the requests h2load saw succeed (the backends have no counter).
#
# MODES (default "ir sys cpu"):
#   ir    user-space instructions per request (valgrind --tool=callgrind, which counts
#         instructions, not time): proxy under callgrind, warm-up, counters zeroed, IDLE_S
#         seconds idle and dumped (baseline Ir/s), zeroed, exactly N requests (h2load --h1
#         -n N -c CONNS; h2: -c H2_CONNS -m H2_STREAMS), dumped.
#         Ir/req = (Ir(load) - idle Ir/s × load seconds) / N. Moves 1-4 % run to run with
#         how many events one wakeup handles. For switchyard it also prints memcpy calls
#         and the top functions by self Ir per request (bench/callgrind_self.py; results/*.profile.txt).
#   cache the same run as `ir` with callgrind's cache and branch simulation
#         (--cache-sim=yes --branch-sim=yes; a model of L1 and last-level caches and of
#         branch predictors, not this CPU's counters, which this VM does not expose):
#         per request, L1 instruction-cache misses, L1 data-cache misses (reads and
#         writes), last-level misses, and mispredicted branches (conditional and
#         indirect). Explains user µs that do not follow instructions.
#   sys   syscalls per request: `perf stat -e raw_syscalls:sys_enter` on the proxy process
#         (all threads) around exactly N requests, minus the idle rate; the proxy runs at
#         full speed, so epoll batching is the real one (strace -c -f would slow it ~5×).
#   cpu   user+sys CPU µs per request without instrumentation: wrk -t1 -c CONNS -d DURATION
#         (h2: h2load -D), utime+stime from /proc/PID/stat before/after, divided by the
#         requests the backends served meanwhile. ROUNDS rounds interleaved (nginx,
#         haproxy, switchyard, nginx, ...); the median per proxy. As fast as the load
#         goes, which on 2 cores is the load core's limit: a proxy with time to spare
#         then wakes more often per request. CPU_RATE=R offers every proxy the same R
#         requests/s instead (h2load --rps, h1 too), below what all of them can serve.
#   mem   RSS per idle keep-alive connection: IDLE_CONNS (10,000) client connections each
#         make one GET and stay open; (RSS with them − RSS before) / IDLE_CONNS; then all
#         close and RSS is read again 2 s later ("after spike"), next to the RSS at start.
#   rps   req/s with wrk (h1 only) at WORKERS_LIST ("1 2") workers per proxy, ROUNDS rounds
#         interleaved: the medians of req/s and of the rounds' p99, each with the proxy's
#         lowest – highest round under it (this one does swing with the machine's load),
#         and how busy the load CPU and the proxy's CPUs were during the measured run
#         (/proc/stat): a load CPU near 100 % means the figure is the load side's limit,
#         not the proxy's. RPS_CAP=P runs each proxy under a CPU quota of P % of one CPU
#         (cgroup; bench/lib.sh cpu_cap), so that the proxy is the bottleneck and req/s
#         compares what each proxy does with the same CPU budget (p99 then shows the
#         quota's throttling, not the proxy).
#   scale switchyard only: SCALE_SERVICES (10,000) × SCALE_INSTANCES (10) in the instances
#         file; time to /readyz, RSS, one /metrics scrape (time, size) and the latency of
#         SCALE_PROBES proxied requests sent while scrapes run back to back, vs as many
#         without a scrape: SCALE_BLOCKS blocks of each, alternating (alone, during, alone,
#         ...), so that other load on the machine falls on both alike; p50 / p99 / max.
#         A probe is one GET on a new connection, timed in one Python process (connect to
#         the last body byte; no process start-up inside the figure), pinned to the load
#         CPU; the scraper (curl) runs there too, under SCHED_IDLE, so that what is
#         measured is what the gateway adds, not the scraper's own CPU competing with the
#         probe client and the backends on the load core.
#
# Usage (root, or a user allowed to use perf):
#   bench/cost.sh                                  # h1: ir sys cpu (~6 min)
#   PROTO=h2 bench/cost.sh                         # the same over h2c
#   PROTO=grpc bench/cost.sh                       # the same for unary gRPC
#   MODES="mem" bench/cost.sh                      # idle-connection memory
#   MODES="rps" ROUNDS=3 bench/cost.sh             # W=1 and W=2 throughput
#   MODES="scale" bench/cost.sh
#   MODES=cache bench/cost.sh                      # simulated cache and branch misses
#   PROXIES="switchyard" MODES=ir bench/cost.sh    # only switchyard (no ratios)
#   MODES="rps" WORKERS_LIST=1 RPS_CAP=50 bench/cost.sh   # req/s on half a CPU each
#   MODES=cpu CPU_RATE=30000 bench/cost.sh         # CPU per request at the same offered load
# Knobs: SWITCHYARD (binary), N (20000), CONNS (50), H2_CONNS (16), H2_STREAMS (32),
#   IDLE_S (5), DURATION (10), ROUNDS (3), IDLE_CONNS (10000), PORT_OFFSET (0), NGINX_KEEPALIVE (1024: nginx
#   caches only that many idle upstream connections; 64 would make it open new ones under
#   h2c's 512 concurrent streams), WORKERS_LIST, SCALE_SERVICES, SCALE_INSTANCES.
# Ports: 127.0.0.1:15081-15084 (h1), 15281-15284 (h2c), 15381-15384 (gRPC), backends
# 15100-15103, gRPC backends 15111-15113, admin 15984.
# Output: a Markdown table on stdout and in bench/results/cost-<proto>-<date>.md.
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=bench/lib.sh
. "$BENCH_DIR/lib.sh"

MODES=${MODES:-ir sys cpu}
PROTO=${PROTO:-h1}
PROXIES=${PROXIES:-nginx haproxy switchyard}
N=${N:-20000}
CONNS=${CONNS:-50}
H2_CONNS=${H2_CONNS:-16}
H2_STREAMS=${H2_STREAMS:-32}
IDLE_S=${IDLE_S:-5}
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
IDLE_CONNS=${IDLE_CONNS:-10000}
NGINX_KEEPALIVE=${NGINX_KEEPALIVE:-1024}
WORKERS_LIST=${WORKERS_LIST:-1 2}
SCALE_SERVICES=${SCALE_SERVICES:-10000}
SCALE_INSTANCES=${SCALE_INSTANCES:-10}
SCALE_PROBES=${SCALE_PROBES:-200}
SCALE_BLOCKS=${SCALE_BLOCKS:-5}
WORKERS=1

# PORT_OFFSET moves every port (two runs side by side: PORT_OFFSET=1000).
O=${PORT_OFFSET:-0}
BE_STUB=$((15100 + O))
BE_PORTS=($((15101 + O)) $((15102 + O)) $((15103 + O)))
declare -A H1_PORT=([nginx]=$((15081 + O)) [haproxy]=$((15082 + O)) [switchyard]=$((15084 + O)))
declare -A H2_PORT=([nginx]=$((15281 + O)) [haproxy]=$((15282 + O)) [switchyard]=$((15284 + O)))
GRPC_BE_PORTS=($((15111 + O)) $((15112 + O)) $((15113 + O)))
declare -A GRPC_PORT=([nginx]=$((15381 + O)) [haproxy]=$((15382 + O)) [switchyard]=$((15384 + O)))
SW_ADMIN=$((15984 + O))
CLK=$(getconf CLK_TCK)

for t in nginx:nginx haproxy:haproxy wrk:wrk h2load:nghttp2-client python3:python3 curl:curl; do
  require_tool "${t%%:*}" "${t#*:}"
done
[[ " $MODES " != *" ir "* && " $MODES " != *" cache "* ]] || { require_tool valgrind valgrind; require_tool callgrind_control valgrind; }
[[ " $MODES " != *" sys "* ]] || require_tool perf linux-perf
[[ "$PROTO" == h1 || "$PROTO" == h2 || "$PROTO" == grpc ]] || die "PROTO must be h1, h2 or grpc"

now() { date +%s.%N; }
port_of() {
  case $PROTO in
    h2) echo "${H2_PORT[$1]}" ;;
    grpc) echo "${GRPC_PORT[$1]}" ;;
    *) echo "${H1_PORT[$1]}" ;;
  esac
}
url_of() { if [[ "$PROTO" == grpc ]]; then echo "http://127.0.0.1:$(port_of "$1")/bench.Echo/Unary"; else echo "http://127.0.0.1:$(port_of "$1")/"; fi; }
# h2load's arguments for one unary gRPC call per request (the frame is written by main).
GRPC_ARGS=()
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13, $12, $13}'; }
be_requests() { curl -fs -m 5 "http://127.0.0.1:$BE_STUB/" | awk 'NR == 3 {print $3}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a != "" && b + 0 > 0) printf "%.2f×", a / b; else printf "—" }'; }

# ---- configs -----------------------------------------------------------------------------
write_configs() { # WORKERS
  local w=$1 d=$BENCH_TMP p i
  mkdir -p "$d/be" "$d/nginx" "$d/haproxy" "$d/switchyard"
  {
    printf 'worker_processes 1;\npid %s/be/nginx.pid;\nworker_rlimit_nofile 20000;\n' "$d"
    printf 'events { worker_connections 16384; }\nhttp {\n    access_log off;\n    default_type text/plain;\n'
    printf '    keepalive_timeout 120s;\n    keepalive_requests 10000000;\n%s\n' "$(nginx_temp_paths "$d/be")"
    printf '    server { listen 127.0.0.1:%s; location / { stub_status; } }\n' "$BE_STUB"
    for p in "${BE_PORTS[@]}"; do
      printf '    server { listen 127.0.0.1:%s backlog=4096; location / { return 200 "ok from %s\\n"; } }\n' "$p" "$p"
    done
    printf '}\n'
  } >"$d/be/nginx.conf"
  {
    # master_process off: one process, so callgrind and /proc/PID/stat see all the work.
    printf 'worker_processes %s;\nmaster_process %s;\npid %s/nginx/nginx.pid;\nworker_rlimit_nofile 20000;\n' \
      "$w" "$([[ $w == 1 ]] && echo off || echo on)" "$d"
    printf 'events { worker_connections 16384; }\nhttp {\n    access_log off;\n    keepalive_timeout 120s;\n'
    printf '    keepalive_requests 10000000;\n%s\n    upstream be {\n' "$(nginx_temp_paths "$d/nginx")"
    for p in "${BE_PORTS[@]}"; do printf '        server 127.0.0.1:%s;\n' "$p"; done
    printf '        keepalive %s;\n        keepalive_requests 10000000;\n    }\n' "$NGINX_KEEPALIVE"
    printf '    upstream grpcbe {\n'
    for p in "${GRPC_BE_PORTS[@]}"; do printf '        server 127.0.0.1:%s;\n' "$p"; done
    printf '        keepalive %s;\n        keepalive_requests 10000000;\n    }\n' "$NGINX_KEEPALIVE"
    printf '    http2_max_concurrent_streams 1024;\n'
    printf '    proxy_http_version 1.1;\n    proxy_set_header Connection "";\n'
    printf '    server { listen 127.0.0.1:%s backlog=4096; location / { proxy_pass http://be; } }\n' "${H1_PORT[nginx]}"
    printf '    server { listen 127.0.0.1:%s http2 backlog=4096; location / { proxy_pass http://be; } }\n' "${H2_PORT[nginx]}"
    printf '    server { listen 127.0.0.1:%s http2 backlog=4096; location / { grpc_pass grpc://grpcbe; } }\n}\n' "${GRPC_PORT[nginx]}"
  } >"$d/nginx/nginx.conf"
  {
    printf 'global\n    nbthread %s\n    maxconn 10500\n    no strict-limits\n' "$w"
    printf 'defaults\n    mode http\n    option http-keep-alive\n    http-reuse always\n'
    printf '    timeout connect 2s\n    timeout client 120s\n    timeout server 60s\n    timeout http-keep-alive 120s\n    maxconn 10500\n'
    printf 'frontend h1\n    bind 127.0.0.1:%s backlog 4096\n    default_backend be\n' "${H1_PORT[haproxy]}"
    printf 'frontend h2c\n    bind 127.0.0.1:%s proto h2 backlog 4096\n    default_backend be\n' "${H2_PORT[haproxy]}"
    printf 'frontend grpc\n    bind 127.0.0.1:%s proto h2 backlog 4096\n    default_backend grpcbe\n' "${GRPC_PORT[haproxy]}"
    printf 'backend be\n    balance roundrobin\n'
    i=0
    for p in "${BE_PORTS[@]}"; do i=$((i + 1)); printf '    server b%s 127.0.0.1:%s\n' "$i" "$p"; done
    printf 'backend grpcbe\n    balance roundrobin\n'
    i=0
    for p in "${GRPC_BE_PORTS[@]}"; do i=$((i + 1)); printf '    server g%s 127.0.0.1:%s proto h2\n' "$i" "$p"; done
  } >"$d/haproxy/haproxy.cfg"
  write_instances_file "$d/switchyard/instances.toml" echo "${BE_PORTS[@]/#/127.0.0.1:}"
  i=0
  for p in "${GRPC_BE_PORTS[@]}"; do
    i=$((i + 1))
    printf '[[instance]]\nservice = "grpc"\nid = "g%s"\naddr = "127.0.0.1:%s"\nmetadata = { protocol = "h2c" }\n\n' \
      "$i" "$p" >>"$d/switchyard/instances.toml"
  done
  {
    WORKERS=$w switchyard_conf_head "$d/switchyard/instances.toml" "$SW_ADMIN"
    # The idle connections of `mem` must stay open: nginx keepalive_timeout is 120 s here.
    printf '[timeouts]\nheader_read = "120s"\n\n'
    for p in h1 h2; do
      printf '[[listener]]\nname = "%s"\nprotocol = "http"\nlisten = "127.0.0.1:%s"\n' "$p" \
        "$([[ $p == h1 ]] && echo "${H1_PORT[switchyard]}" || echo "${H2_PORT[switchyard]}")"
      printf '[[listener.route]]\npath_prefix = "/"\nservice = "echo"\nbalance = "round_robin"\n\n'
    done
    printf '[[listener]]\nname = "grpc"\nprotocol = "http"\nlisten = "127.0.0.1:%s"\n' "${GRPC_PORT[switchyard]}"
    printf '[[listener.route]]\ngrpc_service = "bench.Echo"\nservice = "grpc"\nbalance = "round_robin"\n\n'
  } >"$d/switchyard/switchyard.toml"
}

# proxy_cmd NAME -> CMD: the foreground command of that proxy
proxy_cmd() {
  case $1 in
    nginx) CMD=(nginx -c "$BENCH_TMP/nginx/nginx.conf" -p "$BENCH_TMP/nginx" -e "$BENCH_TMP/nginx/error.log" -g 'daemon off;') ;;
    haproxy) CMD=(haproxy -db -f "$BENCH_TMP/haproxy/haproxy.cfg") ;;
    switchyard) CMD=("$SWITCHYARD_BIN" run --config "$BENCH_TMP/switchyard/switchyard.toml") ;;
  esac
}

declare -A PID_OF=()
# start_proxy NAME [WRAPPER...] — pinned as a proxy; waits for its port and checks that
# 6 requests through it reach all three backends.
start_proxy() {
  local name=$1 i got
  shift
  proxy_cmd "$name"
  start_bg "$name" proxy "$@" "${CMD[@]}"
  PID_OF[$name]=$BG_PID
  wait_for_port "$(port_of "$name")" "$BG_PID" 120 || { show_log "$name"; die "$name did not start"; }
  if [[ $name == switchyard ]]; then
    for ((i = 0; i < 300; i++)); do curl -fs -m 2 "http://127.0.0.1:$SW_ADMIN/readyz" >/dev/null && break; sleep 0.2; done
  fi
  if [[ "$PROTO" == grpc ]]; then
    # curl prints HTTP/2 trailers with the headers: grpc-status must be 0 (h2load counts
    # any HTTP 200 as a success, a gRPC error too).
    for i in 1 2 3; do
      got=$(curl -sS -m 20 --http2-prior-knowledge -D - -o /dev/null --data-binary "@$BENCH_TMP/grpc-request.bin" \
        -H 'content-type: application/grpc' -H 'te: trailers' "$(url_of "$name")" || true)
      grep -qi '^grpc-status: 0' <<<"$got" || die "$name: a gRPC call did not end with grpc-status 0: $got"
    done
    return
  fi
  local h=()
  [[ "$PROTO" == h2 ]] && h=(--http2-prior-knowledge)
  got=$(for i in 1 2 3 4 5 6; do curl -fsS -m 20 "${h[@]}" "$(url_of "$name")"; done | sort -u | wc -l)
  [[ $got == 3 ]] || die "$name: 6 requests reached $got distinct backends, expected 3"
}
stop_proxy() { stop_bg "${PID_OF[$1]}"; unset "PID_OF[$1]"; }

load_fixed() { # NAME COUNT
  if [[ "$PROTO" != h1 ]]; then
    timeout -k 5 600 taskset -c "$LOAD_CPUS" h2load -n "$2" -c "$H2_CONNS" -m "$H2_STREAMS" "${GRPC_ARGS[@]}" "$(url_of "$1")"
  else
    timeout -k 5 600 taskset -c "$LOAD_CPUS" h2load --h1 -n "$2" -c "$CONNS" -m 1 "$(url_of "$1")"
  fi
}
load_timed() { # NAME SECONDS
  if [[ -n "${CPU_RATE:-}" ]]; then
    # The same offered load for every proxy: CPU_RATE requests per second in all, spread
    # over the clients (h2load --rps is per client).
    local -a shape=(--h1 -c "$CONNS" --rps $((CPU_RATE / CONNS)))
    [[ "$PROTO" == h1 ]] || shape=(-c "$H2_CONNS" -m "$H2_STREAMS" --rps $((CPU_RATE / H2_CONNS)))
    timeout -k 5 $(($2 + 60)) taskset -c "$LOAD_CPUS" h2load "${shape[@]}" -D "$2" "${GRPC_ARGS[@]}" "$(url_of "$1")"
  elif [[ "$PROTO" != h1 ]]; then
    timeout -k 5 $(($2 + 60)) taskset -c "$LOAD_CPUS" h2load -c "$H2_CONNS" -m "$H2_STREAMS" -D "$2" "${GRPC_ARGS[@]}" "$(url_of "$1")"
  else
    timeout -k 5 $(($2 + 60)) taskset -c "$LOAD_CPUS" wrk -t1 -c "$CONNS" -d "${2}s" --timeout 5s "$(url_of "$1")"
  fi
}
succeeded() { awk '/^requests:/ {print $8}' "$1"; }
warm() { load_fixed "$1" 2000 >"$BENCH_TMP/warm-$1.txt" 2>&1 || true; }

# ---- ir ----------------------------------------------------------------------------------
declare -A IR=() MEMCPY=() I1MISS=() D1MISS=() LLMISS=() BMISS=()
# measure_ir NAME [cache] — with `cache`, the simulated cache and branch misses instead.
measure_ir() {
  local name=$1 sim=${2:-} pid t0 t1 t2 t3 idle load out=$BENCH_TMP/cg${2:+-$2}
  local -a extra=()
  [[ -z "$sim" ]] || extra=(--cache-sim=yes --branch-sim=yes)
  mkdir -p "$out"
  start_proxy "$name" valgrind --tool=callgrind "${extra[@]}" --compress-strings=no --compress-pos=no --callgrind-out-file="$out/$name.%p"
  pid=${PID_OF[$name]}
  warm "$name"
  callgrind_control -z "$pid" >/dev/null
  t0=$(now); sleep "$IDLE_S"; callgrind_control -d idle "$pid" >/dev/null; t1=$(now)
  callgrind_control -z "$pid" >/dev/null
  t2=$(now); load_fixed "$name" "$N" >"$BENCH_TMP/ir-load-$name.txt" 2>&1; t3=$(now)
  callgrind_control -d load "$pid" >/dev/null
  [[ "$(succeeded "$BENCH_TMP/ir-load-$name.txt")" == "$N" ]] || warn "$name: not all $N requests succeeded"
  stop_proxy "$name"
  local fi fl
  fi=$(grep -l '^desc: Trigger: dump idle' "$out/$name.$pid".* | head -1)
  fl=$(grep -l '^desc: Trigger: dump load' "$out/$name.$pid".* | head -1)
  if [[ -n "$sim" ]]; then
    # Per request, idle rate subtracted, for sums of the events the dumps list.
    per_request() { # EVENT...
      awk -v want="$*" -v a="$t0" -v b="$t1" -v c="$t2" -v d="$t3" -v n="$N" '
        /^events:/ { for (i = 2; i <= NF; i++) col[$i] = i }
        /^summary:/ { split(want, w, " "); v = 0; for (k in w) v += $(col[w[k]]); tot[FILENAME] = v }
        END { printf "%.0f", (tot[ARGV[2]] - tot[ARGV[1]] / (b - a) * (d - c)) / n }' "$fi" "$fl"
    }
    I1MISS[$name]=$(per_request I1mr)
    D1MISS[$name]=$(per_request D1mr D1mw)
    LLMISS[$name]=$(per_request ILmr DLmr DLmw)
    BMISS[$name]=$(per_request Bcm Bim)
    log "cache $name: per request I1 misses ${I1MISS[$name]}, D1 misses ${D1MISS[$name]}, LL misses ${LLMISS[$name]}, mispredicted branches ${BMISS[$name]}"
    return
  fi
  idle=$(awk '/^summary:/ {print $2}' "$fi")
  load=$(awk '/^summary:/ {print $2}' "$fl")
  IR[$name]=$(awk -v l="$load" -v i="$idle" -v a="$t0" -v b="$t1" -v c="$t2" -v d="$t3" -v n="$N" \
    'BEGIN { printf "%.0f", (l - i / (b - a) * (d - c)) / n }')
  if [[ $name == switchyard ]]; then
    # memcpy/memmove: exclusive Ir per request (moves of futures, requests, responses).
    "$BENCH_DIR/callgrind_self.py" "$fl" "$N" 40 >"$BENCH_TMP/profile-$PROTO.txt"
    MEMCPY[$name]=$("$BENCH_DIR/callgrind_self.py" "$fl" "$N" 100000 |
      awk '/__mem(cpy|move)/ { s += $1 } END { printf "%.0f", s }')
    cp "$fl" "$BENCH_TMP/switchyard-$PROTO.callgrind"
  fi
  log "ir $name: ${IR[$name]} instructions/request"
}

# ---- sys ---------------------------------------------------------------------------------
declare -A SYS=()
measure_sys() {
  local name=$1 pid ppid t0 t1 a b
  start_proxy "$name"
  pid=${PID_OF[$name]}
  warm "$name"
  sleep 1
  perf stat -x, -e raw_syscalls:sys_enter -p "$pid" -o "$BENCH_TMP/sys-idle-$name.csv" -- sleep 2 >/dev/null 2>&1
  perf stat -x, -e raw_syscalls:sys_enter -p "$pid" -o "$BENCH_TMP/sys-$name.csv" >/dev/null 2>&1 &
  ppid=$!
  sleep 0.5
  t0=$(now); load_fixed "$name" "$N" >"$BENCH_TMP/sys-load-$name.txt" 2>&1; t1=$(now)
  kill -INT "$ppid"; wait "$ppid" 2>/dev/null || true
  stop_proxy "$name"
  a=$(awk -F, '$3 ~ /sys_enter/ {print $1}' "$BENCH_TMP/sys-idle-$name.csv")
  b=$(awk -F, '$3 ~ /sys_enter/ {print $1}' "$BENCH_TMP/sys-$name.csv")
  # the window also held 0.5 s + the kill of idle time: subtract that at the idle rate
  SYS[$name]=$(awk -v a="$a" -v b="$b" -v s="$(awk -v x="$t0" -v y="$t1" 'BEGIN {print y - x + 0.5}')" -v n="$N" \
    'BEGIN { printf "%.2f", (b - a / 2 * s) / n }')
  log "sys $name: ${SYS[$name]} syscalls/request"
}

# ---- cpu ---------------------------------------------------------------------------------
declare -A CPU_ALL=() CPU=() USR=() SYSCPU=() USR_ALL=() SYS_ALL=()
measure_cpu() {
  local name r c0 u0 s0 c1 u1 s1 b0 b1 q
  for name in $PROXIES; do start_proxy "$name"; warm "$name"; done
  for ((r = 1; r <= ROUNDS; r++)); do
    for name in $PROXIES; do
      read -r c0 u0 s0 < <(cpu_ticks "${PID_OF[$name]}"); b0=$(be_requests)
      load_timed "$name" "$DURATION" >"$BENCH_TMP/cpu-$name-$r.txt" 2>&1 || warn "$name: load failed"
      sleep 0.5
      read -r c1 u1 s1 < <(cpu_ticks "${PID_OF[$name]}"); b1=$(be_requests)
      # The gRPC backends count nothing: what h2load saw succeed (checked grpc-status 0 above).
      if [[ "$PROTO" == grpc ]]; then q=$(succeeded "$BENCH_TMP/cpu-$name-$r.txt"); else q=$((b1 - b0 - 1)); fi
      CPU_ALL[$name]+=" $(awk -v t=$((c1 - c0)) -v k="$CLK" -v q="$q" 'BEGIN { printf "%.2f", 1e6 * t / k / q }')"
      USR_ALL[$name]+=" $(awk -v t=$((u1 - u0)) -v k="$CLK" -v q="$q" 'BEGIN { printf "%.2f", 1e6 * t / k / q }')"
      SYS_ALL[$name]+=" $(awk -v t=$((s1 - s0)) -v k="$CLK" -v q="$q" 'BEGIN { printf "%.2f", 1e6 * t / k / q }')"
      log "cpu $name round $r: $q requests, $(awk -v t=$((c1 - c0)) -v k="$CLK" -v q="$q" 'BEGIN { printf "%.2f", 1e6 * t / k / q }') µs/request"
      sleep 1
    done
  done
  for name in $PROXIES; do
    CPU[$name]=$(median "${CPU_ALL[$name]}")
    USR[$name]=$(median "${USR_ALL[$name]}")
    SYSCPU[$name]=$(median "${SYS_ALL[$name]}")
    stop_proxy "$name"
  done
}

# ---- mem ---------------------------------------------------------------------------------
declare -A MEM_START=() MEM_PER_CONN=() MEM_AFTER=() MEM_HELD=()
write_idleconns() {
  cat >"$BENCH_TMP/idleconns.py" <<'PY'
"""Open N keep-alive connections to 127.0.0.1:PORT, one GET on each (200 checked), keep
them idle; print 'ready'; close them all when stdin closes."""
import socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
req = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
socks = []
for start in range(0, n, 250):
    cur = [socket.create_connection(("127.0.0.1", port)) for _ in range(min(250, n - start))]
    for s in cur:
        s.sendall(req)
    for s in cur:
        buf = b""
        while not buf.endswith(b"\n") or b"ok from" not in buf:
            d = s.recv(4096)
            if not d:
                raise SystemExit("closed before the response")
            buf += d
        if not buf.startswith(b"HTTP/1.1 200"):
            raise SystemExit("bad status: %r" % buf[:40])
    socks += cur
print("ready", len(socks), flush=True)
sys.stdin.read()
for s in socks:
    s.close()
PY
}
measure_mem() {
  local name=$1 pid port r0 r1 r2 cpid fifo=$BENCH_TMP/idle.in i
  write_idleconns
  start_proxy "$name"
  pid=${PID_OF[$name]}
  port=${H1_PORT[$name]}
  sleep 1
  MEM_START[$name]=$(rss_kb "$pid")
  warm "$name"
  sleep 1
  r0=$(rss_kb "$pid")
  rm -f "$fifo"; mkfifo "$fifo"
  taskset -c "$LOAD_CPUS" python3 "$BENCH_TMP/idleconns.py" "$port" "$IDLE_CONNS" <"$fifo" >"$BENCH_TMP/idle-$name.out" 2>&1 &
  cpid=$!
  exec 7>"$fifo"
  for ((i = 0; i < 1200; i++)); do grep -q '^ready' "$BENCH_TMP/idle-$name.out" && break; kill -0 $cpid 2>/dev/null || break; sleep 0.1; done
  grep -q '^ready' "$BENCH_TMP/idle-$name.out" || { exec 7>&-; cat "$BENCH_TMP/idle-$name.out" >&2; die "$name: idle connections not established"; }
  sleep 2
  r1=$(rss_kb "$pid")
  MEM_HELD[$name]=$(ss -Htn state established "( sport = :$port )" | wc -l)
  exec 7>&-
  wait $cpid 2>/dev/null || true
  sleep 2
  r2=$(rss_kb "$pid")
  MEM_PER_CONN[$name]=$(awk -v a="$r0" -v b="$r1" -v n="$IDLE_CONNS" 'BEGIN { printf "%.2f", (b - a) / n }')
  MEM_AFTER[$name]=$r2
  log "mem $name: start ${MEM_START[$name]} KB, warm $r0 KB, with $IDLE_CONNS idle $r1 KB (${MEM_PER_CONN[$name]} KB each, ${MEM_HELD[$name]} held), 2 s after close $r2 KB"
  stop_proxy "$name"
}

# ---- rps ---------------------------------------------------------------------------------
declare -A RPS_ALL=() P99_ALL=() LOADBUSY_ALL=() PROXYBUSY_ALL=()
# rps_proxy_cpus W — the CPUs the proxy runs on with W workers: its own with one, all with more.
rps_proxy_cpus() { if (($1 == 1)); then echo "$PROXY_CPUS"; else echo "0-$(($(nproc) - 1))"; fi; }
measure_rps() {
  local w r name f pcpus l0 p0
  for w in $WORKERS_LIST; do
    write_configs "$w"
    local saved=$PROXY_CPUS
    pcpus=$(rps_proxy_cpus "$w")
    PIN_PROXY=(taskset -c "$pcpus")
    for ((r = 1; r <= ROUNDS; r++)); do
      for name in $PROXIES; do
        start_proxy "$name"
        [[ -z "${RPS_CAP:-}" ]] || cpu_cap "${PID_OF[$name]}" "$RPS_CAP"
        timeout -k 5 60 taskset -c "$LOAD_CPUS" wrk -t1 -c "$CONNS" -d 2s "$(url_of "$name")" >/dev/null 2>&1 || true
        f=$BENCH_TMP/rps-$name-$w-$r.txt
        l0=$(core_ticks "$LOAD_CPUS")
        p0=$(core_ticks "$pcpus")
        timeout -k 5 $((DURATION + 60)) taskset -c "$LOAD_CPUS" wrk -t1 -c "$CONNS" -d "${DURATION}s" --latency "$(url_of "$name")" >"$f" 2>&1 || warn "wrk failed"
        LOADBUSY_ALL[$name-$w]+=" $(busy_pct "$l0" "$(core_ticks "$LOAD_CPUS")")"
        PROXYBUSY_ALL[$name-$w]+=" $(busy_pct "$p0" "$(core_ticks "$pcpus")")"
        parse_wrk "$f" || die "cannot parse $f"
        RPS_ALL[$name-$w]+=" $WRK_RPS"
        P99_ALL[$name-$w]+=" $WRK_P99"
        log "rps $name W=$w round $r: $WRK_RPS req/s, p99 $WRK_P99 ms, errors $WRK_ERRORS, busy: load CPU ${LOADBUSY_ALL[$name-$w]##* } %, proxy CPU ${PROXYBUSY_ALL[$name-$w]##* } %"
        stop_proxy "$name"
        cpu_uncap
        sleep 1
      done
    done
    PIN_PROXY=(taskset -c "$saved")
  done
  write_configs 1
}

# ---- scale -------------------------------------------------------------------------------
SCALE_LINE=""
# pctl P "ms ms ..." — the P-th percentile (nearest rank; 100 = max), two decimals.
pctl() {
  tr -s ' ' '\n' <<<"$2" | sed '/^$/d' | sort -g | awk -v p="$1" '{ v[NR] = $1 } END {
    if (NR == 0) { print "nan"; exit }
    i = int((p * NR + 99) / 100); if (i < 1) i = 1; printf "%.2f", v[i] }'
}
# scale_probe PORT N — N GETs for Host echo, each on a new connection, 20 ms apart, from
# one Python process on the load CPU; prints each one's ms (connect to last body byte).
scale_probe() {
  "${PIN_LOAD[@]}" python3 - "$1" "$2" <<'PY'
import socket, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
req = b"GET / HTTP/1.1\r\nHost: echo\r\nUser-Agent: scale-probe\r\n\r\n"
out = []
for _ in range(n):
    t0 = time.perf_counter()
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(req)
    buf, want = b"", None
    while want is None or len(buf) < want:
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
        if want is None and b"\r\n\r\n" in buf:
            head = buf.split(b"\r\n\r\n", 1)[0].lower()
            length = [l for l in head.split(b"\r\n") if l.startswith(b"content-length:")]
            want = len(head) + 4 + (int(length[0].split(b":")[1]) if length else 0)
    t1 = time.perf_counter()
    s.close()
    if not buf.startswith(b"HTTP/1.1 200") or b"ok from" not in buf:
        sys.exit(f"scale probe: bad answer {buf[:80]!r}")
    out.append((t1 - t0) * 1000)
    time.sleep(0.02)
print(" ".join(f"{x:.3f}" for x in out))
PY
}
measure_scale() {
  local f=$BENCH_TMP/switchyard/scale-instances.toml cfg=$BENCH_TMP/switchyard/scale.toml t0 t1 pid i
  python3 - "$f" "$SCALE_SERVICES" "$SCALE_INSTANCES" "${BE_PORTS[*]}" <<'PY'
import sys
path, ns, ni, be = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4].split()
with open(path, "w") as out:
    for p in be:
        out.write(f'[[instance]]\nservice = "echo"\nid = "b{p}"\naddr = "127.0.0.1:{p}"\n\n')
    k = 0
    for s in range(ns):
        for i in range(ni):
            out.write(f'[[instance]]\nservice = "svc-{s:05d}"\nid = "i{i}"\naddr = "10.{k >> 16 & 255}.{k >> 8 & 255}.{k & 255}:8080"\n\n')
            k += 1
PY
  {
    switchyard_conf_head "$f" "$SW_ADMIN"
    printf '[[listener]]\nname = "byhost"\nprotocol = "http"\nlisten = "127.0.0.1:%s"\n' "${H1_PORT[switchyard]}"
  } >"$cfg"
  t0=$(now)
  start_bg sw-scale proxy "$SWITCHYARD_BIN" run --config "$cfg"
  pid=$BG_PID
  for ((i = 0; i < 6000; i++)); do
    curl -fs -m 1 "http://127.0.0.1:$SW_ADMIN/readyz" >/dev/null && break
    kill -0 "$pid" 2>/dev/null || die "switchyard exited"
    sleep 0.01
  done
  t1=$(now)
  local url="http://127.0.0.1:${H1_PORT[switchyard]}/" alone="" during="" s scrape_t series size b per
  curl -fs -m 5 -H 'Host: echo' "$url" | grep -q 'ok from' || die "scale: proxied request failed"
  # A first scrape registers nothing new but warms the renderer.
  curl -s -o /dev/null -m 120 "http://127.0.0.1:$SW_ADMIN/metrics"
  per=$(((SCALE_PROBES + SCALE_BLOCKS - 1) / SCALE_BLOCKS))
  : >"$BENCH_TMP/scrapes.txt"
  for ((b = 0; b < SCALE_BLOCKS; b++)); do
    # per requests alone, then per while scrapes run back to back.
    alone+=" $(scale_probe "${H1_PORT[switchyard]}" "$per")"
    rm -f "$BENCH_TMP/scrapes.stop"
    # The scraper loop itself (its forks too, not only curl) on the load CPU, under SCHED_IDLE.
    (
      [[ ${#PIN_LOAD[@]} -eq 0 ]] || taskset -pc "$LOAD_CPUS" "$BASHPID" >/dev/null
      chrt --idle -p 0 "$BASHPID"
      while [[ ! -f "$BENCH_TMP/scrapes.stop" ]]; do
        curl -s -o /dev/null -m 120 -w '%{time_total}\n' "http://127.0.0.1:$SW_ADMIN/metrics"
      done
    ) >>"$BENCH_TMP/scrapes.txt" &
    s=$!
    sleep 0.2
    during+=" $(scale_probe "${H1_PORT[switchyard]}" "$per")"
    touch "$BENCH_TMP/scrapes.stop"
    wait "$s" 2>/dev/null || true # the scrape in progress completes
  done
  scrape_t=$(median "$(tr '\n' ' ' <"$BENCH_TMP/scrapes.txt")")
  # The scrapes above write to /dev/null: writing 644 KiB to a file on disk each time
  # (ext4 writeback, kworkers on both CPUs) added ~2.5 ms to the median probe by itself.
  curl -s -o "$BENCH_TMP/metrics.txt" -m 120 "http://127.0.0.1:$SW_ADMIN/metrics"
  series=$(grep -vc '^#' "$BENCH_TMP/metrics.txt" || true)
  size=$(($(stat -c %s "$BENCH_TMP/metrics.txt") / 1024))
  mkdir -p "$RESULTS_DIR"
  printf 'alone ms:%s\nduring ms:%s\nscrape s: %s\n' "$alone" "$during" "$(tr '\n' ' ' <"$BENCH_TMP/scrapes.txt")" \
    >"$RESULTS_DIR/cost-scale-$BENCH_STAMP.probes.txt"
  SCALE_LINE=$(awk -v a="$t0" -v b="$t1" -v r="$(rss_kb "$pid")" -v st="$scrape_t" -v se="$series" -v sz="$size" \
    -v al="$(pctl 50 "$alone") / $(pctl 99 "$alone") / $(pctl 100 "$alone")" \
    -v du="$(pctl 50 "$during") / $(pctl 99 "$during") / $(pctl 100 "$during")" 'BEGIN {
      printf "| %s × %s | %.2f s | %.0f MB | %.3f s, %d series, %d KiB | %s ms | %s ms |",
        ENVIRON["SCALE_SERVICES"], ENVIRON["SCALE_INSTANCES"], b - a, r / 1024, st, se, sz, al, du }')
  log "scale: $SCALE_LINE"
  stop_bg "$pid"
}

# ---- main --------------------------------------------------------------------------------
main() {
  export SCALE_SERVICES SCALE_INSTANCES
  bench_init cost
  ensure_switchyard || die "no switchyard binary"
  local p
  for p in $BE_STUB "${BE_PORTS[@]}" "${GRPC_BE_PORTS[@]}" "${H1_PORT[@]}" "${H2_PORT[@]}" "${GRPC_PORT[@]}" $SW_ADMIN; do
    port_free_or_die "$p"
  done
  write_configs 1
  start_nginx backends "$BENCH_TMP/be/nginx.conf" load "$BE_STUB" || die "backends did not start"
  if [[ "$PROTO" == grpc ]]; then
    local echo_bin=${GRPC_ECHO:-$REPO_ROOT/target/release/examples/grpc_echo} i
    if [[ ! -x "$echo_bin" ]]; then
      log "building examples/grpc_echo (release)"
      (cd "$REPO_ROOT" && cargo build --release --example grpc_echo) >&2 || die "could not build grpc_echo"
    fi
    for i in 0 1 2; do
      start_bg "grpc-echo-$((i + 1))" load "$echo_bin" "127.0.0.1:${GRPC_BE_PORTS[i]}"
      wait_for_port "${GRPC_BE_PORTS[i]}" "$BG_PID" 10 || die "grpc_echo on ${GRPC_BE_PORTS[i]} did not start"
    done
    # One gRPC frame: uncompressed, 14-byte protobuf message (field 1 = "hello h2load").
    printf '\x00\x00\x00\x00\x0e\x0a\x0chello h2load' >"$BENCH_TMP/grpc-request.bin"
    GRPC_ARGS=(-d "$BENCH_TMP/grpc-request.bin" -H 'content-type: application/grpc' -H 'te: trailers')
  fi

  local m name
  for m in $MODES; do
    case $m in
      ir) for name in $PROXIES; do measure_ir "$name"; done ;;
      cache) for name in $PROXIES; do measure_ir "$name" cache; done ;;
      sys) for name in $PROXIES; do measure_sys "$name"; done ;;
      cpu) measure_cpu ;;
      mem) PROTO=h1; for name in $PROXIES; do measure_mem "$name"; done ;;
      rps) PROTO=h1; measure_rps ;;
      scale) PROTO=h1; measure_scale ;;
      *) die "unknown mode $m" ;;
    esac
  done

  local sy report
  sy="$(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')"
  [[ -z "$(git -C "$REPO_ROOT" status --porcelain -- src Cargo.toml 2>/dev/null)" ]] || sy+="+dirty"
  # Which binary, when not the plain release build (e.g. .ci/pgo's target/pgo/switchyard).
  [[ "$SWITCHYARD_BIN" == "$REPO_ROOT/target/release/switchyard" ]] || sy+=" ($SWITCHYARD_BIN)"
  report="$(
    report_header "cost per request ($PROTO): switchyard vs nginx vs HAProxy" \
      "MODES=$MODES, N=$N, CONNS=$CONNS, H2 ${H2_CONNS}×${H2_STREAMS}, ROUNDS=$ROUNDS, DURATION=${DURATION}s, one worker each${RPS_CAP:+, RPS_CAP=$RPS_CAP %}${CPU_RATE:+, CPU_RATE=$CPU_RATE req/s offered}" \
      "nginx $(nginx -v 2>&1 | sed 's|.*nginx/||'), HAProxy $(haproxy -v 2>/dev/null | awk 'NR == 1 {print $3}'), switchyard $sy"
    row() { # LABEL ARRAY-NAME
      local -n arr=$2
      printf '| %s | %s | %s | %s | %s | %s |\n' "$1" "${arr[nginx]:-—}" "${arr[haproxy]:-—}" "${arr[switchyard]:-—}" \
        "$(ratio "${arr[switchyard]:-}" "${arr[nginx]:-}")" "$(ratio "${arr[switchyard]:-}" "${arr[haproxy]:-}")"
    }
    spread() { # LABEL ARRAY-NAME WORKERS: each proxy's rounds as "lowest – highest"
      local -n all=$2
      local name cells=()
      for name in nginx haproxy switchyard; do
        cells+=("$(tr -s ' ' '\n' <<<"${all[$name-$3]:-}" | sed '/^$/d' | sort -g | sed -n '1p;$p' | paste -sd' ' | awk '{ print ($2 == "" ? "—" : $1 " – " $2) }')")
      done
      printf '| %s | %s | %s | %s | | |\n' "$1" "${cells[@]}"
    }
    printf '| %s | nginx | HAProxy | switchyard | sw/nginx | sw/HAProxy |\n|---|---:|---:|---:|---:|---:|\n' "$PROTO"
    [[ " $MODES " != *" ir "* ]] || row "user instructions / request" IR
    [[ " $MODES " != *" ir "* || -z "${MEMCPY[switchyard]:-}" ]] || printf '| memcpy/memmove instructions / request | | | %s | | |\n' "${MEMCPY[switchyard]}"
    if [[ " $MODES " == *" cache "* ]]; then
      row "L1 instruction-cache misses / request (simulated)" I1MISS
      row "L1 data-cache misses / request (simulated)" D1MISS
      row "last-level cache misses / request (simulated)" LLMISS
      row "mispredicted branches / request (simulated)" BMISS
    fi
    [[ " $MODES " != *" sys "* ]] || row "syscalls / request" SYS
    if [[ " $MODES " == *" cpu "* ]]; then
      row "CPU µs / request, user+sys (median of $ROUNDS)${CPU_RATE:+, $CPU_RATE req/s offered}" CPU
      row "  user µs / request" USR
      row "  sys µs / request" SYSCPU
    fi
    if [[ " $MODES " == *" mem "* ]]; then
      row "RSS at start (KB)" MEM_START
      row "RSS per idle keep-alive connection (KB, $IDLE_CONNS open)" MEM_PER_CONN
      row "RSS 2 s after they closed (KB)" MEM_AFTER
      row "connections held open" MEM_HELD
    fi
    if [[ " $MODES " == *" rps "* ]]; then
      local w capped=${RPS_CAP:+, proxy capped at $RPS_CAP % of a CPU}
      declare -A RPS=() P99=() LOADBUSY=() PROXYBUSY=()
      for w in $WORKERS_LIST; do
        for name in $PROXIES; do
          RPS[$name]=$(median "${RPS_ALL[$name-$w]}")
          P99[$name]=$(median "${P99_ALL[$name-$w]}")
          LOADBUSY[$name]=$(median "${LOADBUSY_ALL[$name-$w]}")
          PROXYBUSY[$name]=$(median "${PROXYBUSY_ALL[$name-$w]}")
        done
        row "wrk req/s, W=$w (median of $ROUNDS)$capped" RPS
        spread "  rounds, lowest – highest" RPS_ALL "$w"
        row "wrk p99 ms, W=$w (median of the rounds')$capped" P99
        spread "  rounds, lowest – highest" P99_ALL "$w"
        row "  load CPU $LOAD_CPUS busy % (median)" LOADBUSY
        row "  proxy CPU $(rps_proxy_cpus "$w") busy % (median)" PROXYBUSY
      done
    fi
    if [[ -n "$SCALE_LINE" ]]; then
      printf '\n| services × instances | to /readyz | RSS | /metrics scrape (median) | request alone p50 / p99 / max | during scrapes p50 / p99 / max |\n|---|---:|---:|---:|---:|---:|\n%s\n' "$SCALE_LINE"
    fi
  )"
  printf '\n%s\n' "$report"
  save_report "cost-$PROTO" "$report"
  [[ ! -f "$BENCH_TMP/profile-$PROTO.txt" ]] || { mkdir -p "$RESULTS_DIR"; cp "$BENCH_TMP/profile-$PROTO.txt" "$RESULTS_DIR/cost-$PROTO-$BENCH_STAMP.profile.txt"; }
}

main "$@"
