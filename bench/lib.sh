# shellcheck shell=bash
# bench/lib.sh — shared helpers for the switchyard benchmark scripts.
#
# Source it from a bench script (after `set -euo pipefail`):
#
#   BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
#   . "$BENCH_DIR/lib.sh"
#   bench_init http            # temp dir, EXIT trap, CPU pinning, results dir
#
# What it provides:
#   log / warn / die                       messages on stderr
#   require_tool TOOL APT_PACKAGE          loud failure with the apt-get fix
#   bench_init NAME                        $BENCH_TMP, cleanup trap, $REPO_ROOT, pinning
#   pin_proxy CMD... / pin_load CMD...     run CMD pinned to the proxy / load CPUs
#   start_bg NAME PIN CMD...               start a long-running process (pid in $BG_PID,
#                                          log in $BENCH_TMP/NAME.log), killed on exit
#   stop_bg PID                            TERM, bounded wait, then KILL
#   cpu_cap PID PERCENT / cpu_uncap        PID (all its threads) under a CPU quota of
#                                          PERCENT % of one CPU (cgroup v2 or v1 `cpu`)
#   core_ticks CPUS                        busy and total jiffies of CPUS ("0", "1-3")
#                                          from /proc/stat
#   busy_pct BEFORE AFTER                  the busy % between two core_ticks readings
#   port_free_or_die PORT...               refuse to run over someone else's listener
#   wait_for_port PORT PID [SECS]          bounded wait until 127.0.0.1:PORT accepts
#   wait_for_http URL PID [SECS]           bounded wait until `curl -sf URL` succeeds
#   start_nginx NAME CONF PIN PORT         nginx -c CONF -p dir(CONF) -g 'daemon off;'
#                                          (PIN: proxy|load|none), waits for PORT
#   start_haproxy NAME CONF PORT           haproxy -f CONF -db (pinned as proxy)
#   start_switchyard NAME CONF PORT ADMIN_PORT
#                                          switchyard run --config CONF, waits for /readyz
#   ensure_switchyard                      resolves $SWITCHYARD, builds it if missing
#   switchyard_conf_head INSTANCES PORT    [runtime]/[admin]/[discovery] of a switchyard config
#   nginx_temp_paths PREFIX                temp-path directives confined to PREFIX
#   write_backends_conf FILE PORT...       nginx config: one `return 200 "backend-N\n"`
#                                          server per port (HTTP/1.1, keep-alive)
#   write_instances_file FILE SERVICE ADDR...   switchyard file-discovery instances
#   check_backends URL...                  each URL answers 200 "backend-N"
#   check_round_robin URL N                N requests through a proxy: all 200, and
#                                          lists which backends answered
#   duration_seconds 10s|2m|1h             -> integer seconds
#   run_wrk NAME URL                       warm-up + measured wrk run, parsed and recorded
#   record_result NAME RPS P50_MS P99_MS ERRORS NOTE   (repeatable: medians per NAME)
#   record_failure NAME REASON
#   report_header TITLE SETTINGS           Markdown: date, nproc, CPU, versions, settings
#   report_table BASELINE                  Markdown table with ratios to BASELINE
#   save_report NAME TEXT                  writes bench/results/NAME-<date>.md
#
# Knobs read here (all optional): PROXY_CPUS, LOAD_CPUS, WARMUP, CONNS, DURATION,
# WRK_THREADS, SWITCHYARD, KEEP_TMP, RESULTS_DIR (where reports go; bench/results).

# Debian puts nginx and haproxy in /usr/sbin, which a non-root PATH may lack.
case ":$PATH:" in *:/usr/sbin:*) ;; *) PATH="$PATH:/usr/sbin:/sbin" ;; esac
export PATH

BENCH_PIDS=()
BENCH_TMP=""
BG_PID=""
RESULT_ORDER=()
declare -A RES_RPS=() RES_P50=() RES_P99=() RES_ERR=() RES_NOTE=() RES_FAILED=() \
  RES_ROUNDS=() RES_RPS_ALL=() RES_P50_ALL=() RES_P99_ALL=()

log()  { printf '[bench] %s\n' "$*" >&2; }
warn() { printf '[bench] WARNING: %s\n' "$*" >&2; }
die()  { printf '\n[bench] ERROR: %s\n\n' "$*" >&2; exit 1; }

# require_tool TOOL APT_PACKAGE
require_tool() {
  local tool=$1 pkg=$2
  if ! command -v "$tool" >/dev/null 2>&1; then
    die "'$tool' is not installed. Fix: apt-get install -y $pkg"
  fi
}

bench_cleanup() {
  local rc=$? pid
  trap - EXIT INT TERM
  # Newest first: proxies before the backends they point at.
  for ((i = ${#BENCH_PIDS[@]} - 1; i >= 0; i--)); do
    pid=${BENCH_PIDS[i]}
    stop_bg "$pid"
  done
  cpu_uncap
  if [[ -n "$BENCH_TMP" && -d "$BENCH_TMP" ]]; then
    if [[ -n "${KEEP_TMP:-}" ]]; then
      log "keeping temp dir $BENCH_TMP (KEEP_TMP set)"
    else
      rm -rf -- "$BENCH_TMP"
    fi
  fi
  exit "$rc"
}

# bench_init NAME — call once, before starting anything.
bench_init() {
  BENCH_NAME=$1
  BENCH_DIR=${BENCH_DIR:-"$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"}
  REPO_ROOT="$(cd "$BENCH_DIR/.." && pwd)"
  RESULTS_DIR=${RESULTS_DIR:-"$BENCH_DIR/results"}
  BENCH_TMP="$(mktemp -d "${TMPDIR:-/tmp}/switchyard-bench-$BENCH_NAME.XXXXXX")"
  # nginx workers run as 'nobody' when started by root; let them reach their temp dirs.
  chmod 0755 "$BENCH_TMP"
  trap bench_cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  BENCH_DATE="$(date '+%Y-%m-%d %H:%M:%S %Z')"
  BENCH_STAMP="$(date '+%Y-%m-%d-%H%M%S')"
  BENCH_LOADAVG="$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown)"
  setup_pinning
}

# Proxy on core 1 (and up), load generator and backends on core 0.
setup_pinning() {
  local n
  n="$(nproc)"
  PIN_PROXY=()
  PIN_LOAD=()
  if ! command -v taskset >/dev/null 2>&1; then
    warn "taskset not found (apt-get install -y util-linux): running unpinned"
    PIN_DESC="unpinned (no taskset)"
    return
  fi
  if ((n < 2)); then
    warn "only $n CPU: running unpinned; proxy and load generator share it"
    PIN_DESC="unpinned (1 CPU)"
    return
  fi
  LOAD_CPUS=${LOAD_CPUS:-0}
  if [[ -z "${PROXY_CPUS:-}" ]]; then
    if ((n == 2)); then PROXY_CPUS=1; else PROXY_CPUS="1-$((n - 1))"; fi
  fi
  PIN_PROXY=(taskset -c "$PROXY_CPUS")
  PIN_LOAD=(taskset -c "$LOAD_CPUS")
  PIN_DESC="proxy on CPU $PROXY_CPUS; wrk and backends on CPU $LOAD_CPUS (taskset)"
}

pin_proxy() { "${PIN_PROXY[@]}" "$@"; }
pin_load()  { "${PIN_LOAD[@]}" "$@"; }

# start_bg NAME PIN(proxy|load|none) CMD... — sets BG_PID.
start_bg() {
  local name=$1 pin=$2
  shift 2
  local -a prefix=()
  case "$pin" in
    proxy) prefix=("${PIN_PROXY[@]}") ;;
    load) prefix=("${PIN_LOAD[@]}") ;;
    none) ;;
    *) die "start_bg: bad pin '$pin'" ;;
  esac
  # taskset execs the command, so $! is the server's own pid.
  "${prefix[@]}" "$@" >"$BENCH_TMP/$name.log" 2>&1 </dev/null &
  BG_PID=$!
  BENCH_PIDS+=("$BG_PID")
  log "started $name (pid $BG_PID): $*"
}

# stop_bg PID — TERM, wait up to ~5 s, then KILL. Safe on an already-dead pid.
stop_bg() {
  local pid=$1 i
  kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    warn "pid $pid ignored SIGTERM; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

# cpu_cap PID PERCENT — PID, every thread it has and starts, runs under a CPU quota of
# PERCENT % of one CPU per 100 ms period: cgroup v2 `cpu.max`, else v1 `cpu.cfs_quota_us`
# (root). A process capped below what the load asks of it is the bottleneck, whatever
# the load generator's core can do. The cgroup goes with cpu_uncap (after the process).
CAP_CGROUPS=()
cpu_cap() {
  local pid=$1 pct=$2 dir
  [[ "$pct" =~ ^[0-9]+$ ]] && ((pct >= 1)) || die "cpu_cap: bad percent '$pct'"
  if [[ -f /sys/fs/cgroup/cgroup.controllers ]]; then
    grep -qw cpu /sys/fs/cgroup/cgroup.subtree_control 2>/dev/null \
      || echo +cpu >/sys/fs/cgroup/cgroup.subtree_control 2>/dev/null \
      || die "cpu_cap: cannot enable the cgroup v2 cpu controller (root needed)"
    dir=/sys/fs/cgroup/switchyard-bench-$$-$pid
    mkdir "$dir" || die "cpu_cap: cannot create $dir (root needed)"
    echo "$((pct * 1000)) 100000" >"$dir/cpu.max"
  elif [[ -d /sys/fs/cgroup/cpu ]]; then
    dir=/sys/fs/cgroup/cpu/switchyard-bench-$$-$pid
    mkdir "$dir" || die "cpu_cap: cannot create $dir (root needed)"
    echo 100000 >"$dir/cpu.cfs_period_us"
    echo "$((pct * 1000))" >"$dir/cpu.cfs_quota_us"
  else
    die "cpu_cap: no cgroup cpu controller under /sys/fs/cgroup"
  fi
  CAP_CGROUPS+=("$dir")
  echo "$pid" >"$dir/cgroup.procs" || die "cpu_cap: cannot move pid $pid into $dir"
}
# cpu_uncap — removes the cgroups cpu_cap made (their processes must have exited).
cpu_uncap() {
  local dir
  for dir in "${CAP_CGROUPS[@]}"; do rmdir "$dir" 2>/dev/null || warn "cannot remove $dir"; done
  CAP_CGROUPS=()
}

# core_ticks CPUS — "BUSY TOTAL" jiffies summed over CPUS ("1", "1-3", "0,2"); busy is
# everything but idle and iowait (user, nice, system, irq, softirq, steal).
core_ticks() {
  awk -v list="$1" 'BEGIN {
      n = split(list, parts, ",")
      for (i = 1; i <= n; i++) {
        if (split(parts[i], r, "-") == 2) { for (c = r[1]; c <= r[2]; c++) want["cpu" c] = 1 }
        else want["cpu" parts[i]] = 1
      }
    }
    ($1 in want) { t = $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9; busy += t - $5 - $6; total += t }
    END { print busy + 0, total + 0 }' /proc/stat
}
# busy_pct "BUSY TOTAL" "BUSY TOTAL" — the busy share between two core_ticks, in %.
busy_pct() {
  awk -v a="$1" -v b="$2" 'BEGIN { split(a, x, " "); split(b, y, " ")
    if (y[2] > x[2]) printf "%.0f", 100 * (y[1] - x[1]) / (y[2] - x[2]); else print "nan" }'
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

port_free_or_die() {
  local p
  for p in "$@"; do
    if port_open "$p"; then
      die "127.0.0.1:$p is already in use by another process; stop it or change the port variables"
    fi
  done
}

# show_log NAME — last lines of a started process's log, on stderr.
show_log() {
  local f="$BENCH_TMP/$1.log"
  [[ -s "$f" ]] || return 0
  printf -- '----- last lines of %s log -----\n' "$1" >&2
  tail -n 20 "$f" >&2
  printf -- '-----\n' >&2
}

# wait_for_port PORT PID [SECS] — returns 1 on timeout or if PID died.
wait_for_port() {
  local port=$1 pid=$2 secs=${3:-10} i
  for ((i = 0; i < secs * 10; i++)); do
    port_open "$port" && return 0
    kill -0 "$pid" 2>/dev/null || { warn "pid $pid exited before 127.0.0.1:$port opened"; return 1; }
    sleep 0.1
  done
  warn "127.0.0.1:$port did not open within ${secs}s"
  return 1
}

# wait_for_http URL PID [SECS]
wait_for_http() {
  local url=$1 pid=$2 secs=${3:-10} i
  for ((i = 0; i < secs * 5; i++)); do
    curl -sf --max-time 1 -o /dev/null "$url" && return 0
    kill -0 "$pid" 2>/dev/null || { warn "pid $pid exited before $url was ready"; return 1; }
    sleep 0.2
  done
  warn "$url not ready within ${secs}s"
  return 1
}

# switchyard_conf_head INSTANCES_FILE ADMIN_PORT — the [runtime] (workers = $WORKERS),
# [admin] and file-[discovery] sections of a switchyard bench config, on stdout.
switchyard_conf_head() {
  printf '[runtime]\nworkers = %s\n\n[admin]\nlisten = "127.0.0.1:%s"\n\n[discovery]\nsource = "file"\npath = "%s"\n\n' \
    "$WORKERS" "$2" "$1"
}

# nginx_temp_paths PREFIX — Debian's nginx has absolute temp paths under /var/lib/nginx;
# point them into our own prefix so nothing outside the temp dir is touched.
nginx_temp_paths() {
  local p=$1 t
  for t in client_body proxy fastcgi uwsgi scgi; do
    printf '    %s_temp_path %s/%s_temp;\n' "$t" "$p" "$t"
  done
}

# start_nginx NAME CONF PIN PORT — nginx in the foreground with its own prefix and
# error log (-e, so even the startup log stays out of /var/log/nginx).
start_nginx() {
  local name=$1 conf=$2 pin=$3 port=$4 prefix
  prefix="$(dirname "$conf")"
  nginx -t -q -c "$conf" -p "$prefix" -e "$prefix/error.log" -g 'daemon off;' \
    >"$BENCH_TMP/$name.log" 2>&1 || { show_log "$name"; return 1; }
  start_bg "$name" "$pin" nginx -c "$conf" -p "$prefix" -e "$prefix/error.log" -g 'daemon off;'
  wait_for_port "$port" "$BG_PID" 10 || { show_log "$name"; cat "$prefix/error.log" >&2 2>/dev/null; return 1; }
}

# start_haproxy NAME CONF PORT
start_haproxy() {
  local name=$1 conf=$2 port=$3
  haproxy -c -q -f "$conf" >"$BENCH_TMP/$name.log" 2>&1 || { show_log "$name"; return 1; }
  start_bg "$name" proxy haproxy -f "$conf" -db
  wait_for_port "$port" "$BG_PID" 10 || { show_log "$name"; return 1; }
}

# ensure_switchyard — sets SWITCHYARD_BIN; builds a release binary if it is missing.
ensure_switchyard() {
  [[ -z "${SWITCHYARD_UNAVAILABLE:-}" ]] || return 1
  [[ -z "${SWITCHYARD_BIN:-}" ]] || return 0
  SWITCHYARD_UNAVAILABLE=1 # cleared below on success; a failed build is not retried
  local bin=${SWITCHYARD:-target/release/switchyard}
  [[ "$bin" = /* ]] || bin="$REPO_ROOT/$bin"
  if [[ ! -x "$bin" ]]; then
    if [[ -n "${SWITCHYARD:-}" ]]; then
      warn "SWITCHYARD=$SWITCHYARD is not an executable"
      return 1
    fi
    require_tool cargo "cargo (or install Rust with rustup)"
    log "switchyard binary missing; running cargo build --release (this takes a while)"
    (cd "$REPO_ROOT" && cargo build --release) >&2 || { warn "cargo build --release failed"; return 1; }
    [[ -x "$bin" ]] || { warn "cargo build finished but $bin is still missing"; return 1; }
  fi
  SWITCHYARD_BIN=$bin
  SWITCHYARD_UNAVAILABLE=""
}

# start_switchyard NAME CONF PORT ADMIN_PORT — waits for the listener and /readyz.
start_switchyard() {
  local name=$1 conf=$2 port=$3 admin=$4
  ensure_switchyard || return 1
  start_bg "$name" proxy "$SWITCHYARD_BIN" run --config "$conf"
  if ! wait_for_http "http://127.0.0.1:$admin/readyz" "$BG_PID" 10; then
    warn "switchyard did not become ready (http://127.0.0.1:$admin/readyz) within 10 s"
    show_log "$name"
    return 1
  fi
  wait_for_port "$port" "$BG_PID" 5 || { show_log "$name"; return 1; }
}

# write_backends_conf FILE PORT... — identical, very cheap static HTTP backends.
write_backends_conf() {
  local file=$1 prefix n=0 port
  shift
  prefix="$(dirname "$file")"
  {
    cat <<EOF
worker_processes 1;
pid $prefix/nginx.pid;
error_log $prefix/error.log warn;
events { worker_connections 8192; }
http {
    access_log off;
    default_type text/plain;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
$(nginx_temp_paths "$prefix")
EOF
    for port in "$@"; do
      n=$((n + 1))
      printf '    server { listen 127.0.0.1:%s backlog=4096; return 200 "backend-%s\\n"; }\n' "$port" "$n"
    done
    echo "}"
  } >"$file"
}

# write_instances_file FILE SERVICE ADDR... — ids b1, b2, ...
write_instances_file() {
  local file=$1 svc=$2 n=0 addr
  shift 2
  : >"$file"
  for addr in "$@"; do
    n=$((n + 1))
    printf '[[instance]]\nservice = "%s"\nid = "b%s"\naddr = "%s"\n\n' "$svc" "$n" "$addr" >>"$file"
  done
}

# check_backends URL... — each must answer 200 with a body "backend-N".
check_backends() {
  local url body
  for url in "$@"; do
    body="$(curl -sf --max-time 2 "$url")" || die "backend $url did not answer 200"
    [[ "$body" == backend-* ]] || die "backend $url answered '$body', expected backend-N"
  done
}

# check_round_robin URL N — all N requests must be 200; prints the distinct bodies.
# Returns 1 on any failure.
check_round_robin() {
  local url=$1 n=$2 i body seen=""
  for ((i = 0; i < n; i++)); do
    body="$(curl -sf --max-time 2 "$url")" || { warn "request $((i + 1))/$n to $url failed"; return 1; }
    [[ " $seen " == *" $body "* ]] || seen="${seen:+$seen }$body"
  done
  # shellcheck disable=SC2034 # read by the calling script
  ROUND_ROBIN_SEEN=$seen
  log "$url: $n requests OK, answered by: $seen"
}

# duration_seconds 10s|500ms|2m|1h|10 — integer seconds, rounded up.
duration_seconds() {
  local d=$1
  case "$d" in
    *ms) echo $(((${d%ms} + 999) / 1000)) ;;
    *s) echo "${d%s}" ;;
    *m) echo $((${d%m} * 60)) ;;
    *h) echo $((${d%h} * 3600)) ;;
    *[!0-9]*) die "cannot read duration '$d' (use e.g. 10s, 2m)" ;;
    *) echo "$d" ;;
  esac
}

# to_ms "1.23ms" | "850.00us" | "1.02s" — wrk latency -> milliseconds.
to_ms() {
  awk -v v="$1" 'BEGIN {
    if (v ~ /us$/) { sub(/us$/, "", v); printf "%.3f", v / 1000 }
    else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.3f", v }
    else if (v ~ /m$/) { sub(/m$/, "", v); printf "%.3f", v * 60000 }
    else if (v ~ /s$/) { sub(/s$/, "", v); printf "%.3f", v * 1000 }
    else { printf "nan" }
  }'
}

# parse_wrk FILE — sets WRK_RPS, WRK_P50, WRK_P99 (ms), WRK_ERRORS (count), WRK_ERRDESC.
parse_wrk() {
  local f=$1 p50 p99 sock non2xx
  WRK_RPS="$(awk '/^Requests\/sec:/ {print $2}' "$f")"
  p50="$(awk '$1 == "50%" {print $2}' "$f")"
  p99="$(awk '$1 == "99%" {print $2}' "$f")"
  [[ -n "$WRK_RPS" && -n "$p50" && -n "$p99" ]] || return 1
  WRK_P50="$(to_ms "$p50")"
  WRK_P99="$(to_ms "$p99")"
  # "Socket errors: connect 0, read 0, write 0, timeout 0"
  sock="$(awk '/Socket errors:/ { s = 0; for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+,?$/) s += $i; print s }' "$f")"
  # "Non-2xx or 3xx responses: N" (wrk counts status >= 400 here)
  non2xx="$(awk -F': *' '/Non-2xx or 3xx responses:/ {print $2}' "$f")"
  sock=${sock:-0}
  non2xx=${non2xx:-0}
  WRK_ERRORS=$((sock + non2xx))
  WRK_ERRDESC=""
  if ((sock > 0)); then
    WRK_ERRDESC="socket errors: $(sed -n 's/.*Socket errors: *//p' "$f")"
  fi
  if ((non2xx > 0)); then
    WRK_ERRDESC="${WRK_ERRDESC:+$WRK_ERRDESC; }$non2xx non-2xx/3xx responses"
  fi
}

# run_wrk NAME URL — WARMUP (default 2s) then DURATION (default 10s), CONNS (64),
# WRK_THREADS (1). Both runs bounded by `timeout`. Records the result under NAME.
run_wrk() {
  local name=$1 url=$2
  local conns=${CONNS:-64} dur=${DURATION:-10s} warm=${WARMUP:-2s} threads=${WRK_THREADS:-1}
  local out="$BENCH_TMP/wrk-$name.txt" limit
  limit=$(($(duration_seconds "$dur") + 30))
  log "$name: warm-up $warm"
  timeout -k 5 $(($(duration_seconds "$warm") + 30)) \
    "${PIN_LOAD[@]}" wrk -t"$threads" -c"$conns" -d"$warm" "$url" >"$BENCH_TMP/wrk-$name-warmup.txt" 2>&1 \
    || { warn "$name: warm-up wrk failed"; cat "$BENCH_TMP/wrk-$name-warmup.txt" >&2; return 1; }
  log "$name: measuring $dur, $conns connections, $threads wrk thread(s)"
  timeout -k 5 "$limit" \
    "${PIN_LOAD[@]}" wrk -t"$threads" -c"$conns" -d"$dur" --latency "$url" >"$out" 2>&1 \
    || { warn "$name: wrk failed"; cat "$out" >&2; return 1; }
  if ! parse_wrk "$out"; then
    warn "$name: could not parse wrk output"
    cat "$out" >&2
    return 1
  fi
  record_result "$name" "$WRK_RPS" "$WRK_P50" "$WRK_P99" "$WRK_ERRORS" "$WRK_ERRDESC"
  log "$name: $WRK_RPS req/s, p50 ${WRK_P50} ms, p99 ${WRK_P99} ms, errors $WRK_ERRORS"
}

# record_result NAME RPS P50_MS P99_MS ERRORS NOTE — may be called once per round;
# the table shows the median of each figure over the rounds and the sum of errors.
record_result() {
  local n=$1
  [[ " ${RESULT_ORDER[*]} " == *" $n "* ]] || RESULT_ORDER+=("$n")
  RES_ROUNDS[$n]=$((${RES_ROUNDS[$n]:-0} + 1))
  RES_RPS_ALL[$n]="${RES_RPS_ALL[$n]:-} $2"
  RES_P50_ALL[$n]="${RES_P50_ALL[$n]:-} $3"
  RES_P99_ALL[$n]="${RES_P99_ALL[$n]:-} $4"
  RES_RPS[$n]="$(median "${RES_RPS_ALL[$n]}")"
  RES_P50[$n]="$(median "${RES_P50_ALL[$n]}")"
  RES_P99[$n]="$(median "${RES_P99_ALL[$n]}")"
  RES_ERR[$n]=$((${RES_ERR[$n]:-0} + $5))
  if [[ -n "$6" ]]; then RES_NOTE[$n]="${RES_NOTE[$n]:+${RES_NOTE[$n]}; }$6"; fi
}

# median "N1 N2 ..." — the middle value (mean of the two middle ones for an even count).
median() {
  tr -s ' ' '\n' <<<"$1" | sed '/^$/d' | sort -g | awk '{ v[NR] = $1 } END {
    if (NR == 0) { print "nan"; exit }
    if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2
  }'
}

# record_failure NAME REASON — a row that says the proxy could not be measured.
record_failure() {
  [[ " ${RESULT_ORDER[*]} " == *" $1 "* ]] || RESULT_ORDER+=("$1")
  RES_FAILED[$1]="${RES_FAILED[$1]:+${RES_FAILED[$1]}; }$2"
  warn "$1: FAILED — $2"
}

any_failed() {
  local n
  for n in "${RESULT_ORDER[@]}"; do
    [[ -n "${RES_FAILED[$n]:-}" ]] && return 0
    [[ -n "${RES_ERR[$n]:-}" && "${RES_ERR[$n]}" != 0 ]] && return 0
  done
  return 1
}

cpu_model() {
  local m=""
  command -v lscpu >/dev/null 2>&1 && m="$(lscpu | sed -n 's/^Model name: *//p' | head -n 1)"
  [[ -n "$m" ]] || m="$(sed -n 's/^model name[[:space:]]*: *//p' /proc/cpuinfo | head -n 1)"
  echo "${m:-unknown}"
}

# report_header TITLE SETTINGS [VERSIONS]
report_header() {
  local title=$1 settings=$2 versions=${3:-}
  printf '## %s\n\n' "$title"
  printf -- '- Date: %s\n' "$BENCH_DATE"
  printf -- '- Host: nproc=%s, CPU: %s, kernel %s\n' "$(nproc)" "$(cpu_model)" "$(uname -r)"
  printf -- '- Load average before the run: %s' "$BENCH_LOADAVG"
  if awk -v l="${BENCH_LOADAVG%% *}" 'BEGIN { exit !(l > 0.5) }'; then
    printf ' (⚠ the machine was busy: figures are noisy)'
  fi
  printf '\n'
  printf -- '- Settings: %s\n' "$settings"
  printf -- '- Pinning: %s\n' "$PIN_DESC"
  [[ -z "$versions" ]] || printf -- '- Versions: %s\n' "$versions"
  printf '\n'
}

# report_table BASELINE — Markdown table; ratios relative to BASELINE's row.
# Column "req/s ÷ BASELINE": higher is better; "p99 ÷ BASELINE": lower is better.
report_table() {
  local base=$1 n rps_ratio p99_ratio errs
  local base_rps=${RES_RPS[$base]:-} base_p99=${RES_P99[$base]:-}
  printf '| proxy | requests/s | p50 (ms) | p99 (ms) | req/s vs %s | p99 vs %s | errors |\n' "$base" "$base"
  printf '|---|---:|---:|---:|---:|---:|---|\n'
  for n in "${RESULT_ORDER[@]}"; do
    if [[ -n "${RES_FAILED[$n]:-}" ]]; then
      printf '| %s | — | — | — | — | — | **FAILED**: %s |\n' "$n" "${RES_FAILED[$n]}"
      continue
    fi
    if [[ -n "$base_rps" ]]; then
      rps_ratio="$(awk -v a="${RES_RPS[$n]}" -v b="$base_rps" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "n/a" }')"
      p99_ratio="$(awk -v a="${RES_P99[$n]}" -v b="$base_p99" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "n/a" }')"
    else
      rps_ratio="n/a"
      p99_ratio="n/a"
    fi
    if [[ "${RES_ERR[$n]}" == 0 ]]; then
      errs="0"
    else
      errs="**⚠ ${RES_ERR[$n]}** (${RES_NOTE[$n]})"
    fi
    printf '| %s | %.0f | %.2f | %.2f | %s | %s | %s |\n' \
      "$n" "${RES_RPS[$n]}" "${RES_P50[$n]}" "${RES_P99[$n]}" "$rps_ratio" "$p99_ratio" "$errs"
  done
  local multi=""
  for n in "${RESULT_ORDER[@]}"; do
    if ((${RES_ROUNDS[$n]:-0} > 1)); then multi=1; fi
  done
  if [[ -n "$multi" ]]; then
    printf '\nMedians over rounds. Requests/s per round:'
    for n in "${RESULT_ORDER[@]}"; do
      [[ -z "${RES_RPS_ALL[$n]:-}" ]] || printf ' %s:%s;' "$n" "$(awk '{ for (i = 1; i <= NF; i++) printf " %.0f", $i }' <<<"${RES_RPS_ALL[$n]}")"
    done
    printf '\n'
  fi
  if any_failed; then
    printf '\n**⚠ Some proxies failed or returned errors; their figures are not comparable.**\n'
  fi
}

# save_report NAME TEXT — bench/results/NAME-<date>.md; prints the path on stderr.
save_report() {
  local name=$1 text=$2 file
  mkdir -p "$RESULTS_DIR"
  file="$RESULTS_DIR/$name-$BENCH_STAMP.md"
  printf '%s\n' "$text" >"$file"
  log "report written to ${file#"$REPO_ROOT"/}"
}
