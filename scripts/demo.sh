#!/usr/bin/env bash
# The statemirror demo, end to end on one machine:
#   a leader and a follower redis-server on loopback, statemirror in front of them, a NiFi-style
#   state workload through the proxy, then /status, /metrics, both copies side by side, and a
#   maintenance freeze (writes refused with READONLY, reads still served);
#   then ZooKeeper: a leader and a follower standalone ZooKeeper 3.8 server on loopback, served by
#   the same statemirror process, NiFi-style state znodes through the proxy with zkCli.sh, the
#   mirror status and the follower's copy;
#   then catch-up: `statemirror verify` naming a corrupted NiFi state entry on the follower,
#   `statemirror resync --wait` repairing it, and the follower Redis restarted empty being
#   detected and resynced on its own.
#
#   scripts/demo.sh              run it; everything it started is stopped at the end
#   DEMO_KEEP=1 scripts/demo.sh  leave the servers and the proxy running to poke at
#   scripts/demo.sh stop         stop what a DEMO_KEEP=1 run left running
#
# Installs redis-server/redis-tools/curl/zookeeper with apt-get when missing (install-deps.sh),
# builds the release binary, and keeps its files (config, logs, pids, ZooKeeper data) in .demo/
# (gitignored).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DEMO=$ROOT/.demo
BIN=$ROOT/target/release/statemirror
ZK_JAR=/usr/share/java/zookeeper.jar
SLF4J_JAR=/usr/share/java/slf4j-simple.jar
ZKCLI=/usr/share/zookeeper/bin/zkCli.sh

if [ -t 1 ]; then
    BOLD=$'\033[1m' DIM=$'\033[2m' RESET=$'\033[0m'
else
    BOLD='' DIM='' RESET=''
fi
section() { printf '\n%s== %s ==%s\n' "$BOLD" "$*" "$RESET"; }
note() { printf '%s%s%s\n' "$DIM" "$*" "$RESET"; }
die() {
    echo "demo: $*" >&2
    exit 1
}
indent() { sed 's/^/  /'; }
# Shortens long lines (JSON values) for display.
clip() { awk -v n="${1:-110}" '{ if (length($0) > n) print substr($0, 1, n - 3) "..."; else print }'; }

# Polls "$@" every 0.1 s, at most $tries times.
wait_for() {
    local what=$1 tries=$2
    shift 2
    local i
    for ((i = 0; i < tries; i++)); do
        if "$@" >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.1
    done
    die "$what: not ready after $((tries / 10)) s"
}

# Stops the processes listed in .demo/pids (a DEMO_KEEP=1 run), if they are still ours.
stop_previous() {
    [ -f "$DEMO/pids" ] || return 0
    local pid comm left=()
    while read -r pid; do
        [ -n "$pid" ] || continue
        comm=$(cat "/proc/$pid/comm" 2>/dev/null || true)
        case "$comm" in
            redis-server | statemirror)
                kill "$pid" 2>/dev/null && left+=("$pid")
                ;;
            java) # a demo ZooKeeper server: its command line names a zoo.cfg in .demo/
                if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$DEMO/zk-"; then
                    kill "$pid" 2>/dev/null && left+=("$pid")
                fi
                ;;
        esac
    done <"$DEMO/pids"
    local i
    for ((i = 0; i < 50; i++)); do
        local alive=0
        for pid in "${left[@]+"${left[@]}"}"; do
            kill -0 "$pid" 2>/dev/null && alive=1
        done
        [ "$alive" -eq 0 ] && break
        sleep 0.1
    done
    for pid in "${left[@]+"${left[@]}"}"; do
        kill -9 "$pid" 2>/dev/null || true
    done
    rm -f "$DEMO/pids"
    [ "${#left[@]}" -eq 0 ] || echo "stopped the previous demo (pids ${left[*]})"
}

if [ "${1:-}" = "stop" ]; then
    stop_previous
    exit 0
elif [ $# -gt 0 ]; then
    die "usage: scripts/demo.sh [stop]   (DEMO_KEEP=1 keeps everything running)"
fi

# --- processes this run started, stopped on exit -------------------------------------------
PIDS=()
finished=0
cleanup() {
    local code=$?
    if [ "$finished" -ne 1 ] && [ -f "$DEMO/statemirror.log" ]; then
        echo >&2
        echo "demo: FAILED (exit $code); last lines of $DEMO/statemirror.log:" >&2
        tail -n 20 "$DEMO/statemirror.log" >&2 || true
    fi
    if [ "${DEMO_KEEP:-0}" = "1" ] && [ "$finished" -eq 1 ]; then
        return
    fi
    local pid i alive
    for pid in "${PIDS[@]+"${PIDS[@]}"}"; do
        kill "$pid" 2>/dev/null || true
    done
    for ((i = 0; i < 50; i++)); do
        alive=0
        for pid in "${PIDS[@]+"${PIDS[@]}"}"; do
            kill -0 "$pid" 2>/dev/null && alive=1
        done
        [ "$alive" -eq 0 ] && break
        sleep 0.1
    done
    for pid in "${PIDS[@]+"${PIDS[@]}"}"; do
        kill -9 "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -f "$DEMO/pids"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

started() {
    PIDS+=("$1")
    echo "$1" >>"$DEMO/pids"
}

# Free loopback TCP ports, one per argument name.
free_ports() {
    local ports
    if command -v python3 >/dev/null 2>&1; then
        ports=$(python3 - "$#" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
        )
    else
        # No python3: random ports in 20000-59999 nobody answers on.
        local p list=" "
        while [ "$(wc -w <<<"$list")" -lt "$#" ]; do
            p=$((20000 + RANDOM % 40000))
            case "$list" in *" $p "*) continue ;; esac
            if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
                list="$list$p "
            fi
        done
        ports=$list
    fi
    read -r "$@" <<<"$ports"
}

# --- ZooKeeper helpers ---------------------------------------------------------------------
# A four-letter word to 127.0.0.1:$1 with bash's /dev/tcp (no nc here); prints the reply.
# Bounded: 5 s.
four_letter() { # port, word
    timeout 5 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1" && printf %s "$2" >&3 && cat <&3' \
        _ "$1" "$2" 2>/dev/null
}

# Starts a standalone ZooKeeper (java directly, like the tests) with its zoo.cfg, data and
# server.log in .demo/zk-<role>/.
zk_start() { # role, port
    local dir=$DEMO/zk-$1
    mkdir -p "$dir/data"
    cat >"$dir/zoo.cfg" <<EOF
tickTime=2000
initLimit=10
syncLimit=5
dataDir=$dir/data
clientPort=$2
clientPortAddress=127.0.0.1
admin.enableServer=false
4lw.commands.whitelist=*
maxSessionTimeout=60000
autopurge.purgeInterval=0
EOF
    java -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.net.preferIPv4Stack=true \
        -Dzookeeper.jmx.log4j.disable=true -Dreadonlymode.enabled=true \
        -cp "$ZK_JAR:$SLF4J_JAR" org.apache.zookeeper.server.ZooKeeperServerMain "$dir/zoo.cfg" \
        >"$dir/server.log" 2>&1 </dev/null &
    started $!
    ZK_PID[$1]=$!
}

# Serving: `ruok` -> imok, `conf` names our data dir (not some other server on the port),
# `srvr` says standalone.
zk_serving() { # port, role
    [ "$(four_letter "$1" ruok)" = imok ] &&
        four_letter "$1" conf | grep -qF "dataDir=$DEMO/zk-$2/data" &&
        four_letter "$1" srvr | grep -q '^Mode: standalone'
}

# Waits (at most 60 s) for zk_start's server; shows the log if it dies or never serves.
zk_wait() { # role, port
    local i
    for ((i = 0; i < 600; i++)); do
        zk_serving "$2" "$1" && return 0
        if ! kill -0 "${ZK_PID[$1]}" 2>/dev/null; then
            tail -n 20 "$DEMO/zk-$1/server.log" >&2 || true
            die "ZooKeeper $1 exited (log: .demo/zk-$1/server.log)"
        fi
        sleep 0.1
    done
    tail -n 20 "$DEMO/zk-$1/server.log" >&2 || true
    die "ZooKeeper $1 not serving on port $2 after 60 s"
}

# One zkCli.sh command against server $1 (bounded: 60 s, its JVM included: timeout signals the
# whole process group). Prints the meaningful lines (no connection banner, no SLF4J notes);
# returns zkCli.sh's exit code (1 for a ZooKeeper error such as "Node does not exist").
zkcli() { # server, command...
    local server=$1 rc=0
    shift
    timeout 60 "$ZKCLI" -server "$server" "$@" >"$DEMO/zkcli.out" 2>&1 </dev/null || rc=$?
    grep -vE '^(SLF4J:|Connecting to |WATCHER::|WatchedEvent state:(SyncConnected|Closed) type:None path:null|$)' \
        "$DEMO/zkcli.out" || true
    return "$rc"
}

# zkcli, echoing the command first; output indented, long lines clipped; exits on failure.
zk_show() { # label, server, command...
    local label=$1 server=$2
    shift 2
    local out
    echo "\$ zkCli.sh -server $server $*   ($label)" | clip 150
    out=$(zkcli "$server" "$@") || {
        printf '%s\n' "$out" | indent
        die "zkCli.sh $* against $label failed"
    }
    printf '%s\n' "${out:-(ok)}" | clip 140 | indent
}
declare -A ZK_PID=()

# ===========================================================================================
section "1. dependencies and build"
scripts/install-deps.sh
echo "redis-server: $(redis-server --version | cut -d' ' -f3)"
echo "zookeeper:    $(dpkg-query -W -f '${Version}' zookeeper 2>/dev/null || echo "$ZK_JAR"), $(java -version 2>&1 | head -n 1)"
cargo build --release 2>&1
[ -x "$BIN" ] || die "$BIN was not built"

stop_previous
rm -rf "$DEMO"
mkdir -p "$DEMO/leader" "$DEMO/follower"

# ===========================================================================================
section "2. leader and follower redis-server and ZooKeeper on loopback"
free_ports LEADER_PORT FOLLOWER_PORT PROXY_PORT ADMIN_PORT ZK_LEADER_PORT ZK_FOLLOWER_PORT ZK_PROXY_PORT
ADMIN=http://127.0.0.1:$ADMIN_PORT
# The JVMs take a few seconds to start: launch them first, wait for them after redis.
zk_start leader "$ZK_LEADER_PORT"
zk_start follower "$ZK_FOLLOWER_PORT"
for role in leader follower; do
    if [ "$role" = leader ]; then port=$LEADER_PORT; else port=$FOLLOWER_PORT; fi
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
        --dir "$DEMO/$role" --logfile "$DEMO/$role/redis.log" </dev/null &
    started $!
    [ "$role" = follower ] && FOLLOWER_REDIS_PID=$!
    wait_for "$role redis-server on port $port" 100 redis-cli -h 127.0.0.1 -p "$port" PING
    printf '  %-8s redis-server 127.0.0.1:%s  (pid %s, log .demo/%s/redis.log)\n' \
        "$role" "$port" "$!" "$role"
done
for role in leader follower; do
    if [ "$role" = leader ]; then port=$ZK_LEADER_PORT; else port=$ZK_FOLLOWER_PORT; fi
    zk_wait "$role" "$port"
    printf '  %-8s ZooKeeper    127.0.0.1:%s  (pid %s, standalone, log .demo/zk-%s/server.log)\n' \
        "$role" "$port" "${ZK_PID[$role]}" "$role"
done
echo "  $(four_letter "$ZK_LEADER_PORT" srvr | head -n 1)"
# In production the two are in different regions: the follower is the other region's Redis.
LCLI=(redis-cli -h 127.0.0.1 -p "$LEADER_PORT")
FCLI=(redis-cli -h 127.0.0.1 -p "$FOLLOWER_PORT")
PCLI=(redis-cli -h 127.0.0.1 -p "$PROXY_PORT")

# ===========================================================================================
section "3. statemirror config (config/redis.toml + [zookeeper] of config/zookeeper.toml) and check-config"
CONFIG=$DEMO/statemirror.toml
TOKEN_FILE=$DEMO/admin-token
od -An -N16 -tx1 /dev/urandom | tr -d ' \n' >"$TOKEN_FILE"
chmod 600 "$TOKEN_FILE"
# The example, with the addresses of this demo and an admin token; everything else as shipped.
awk -v admin="127.0.0.1:$ADMIN_PORT" -v token="$TOKEN_FILE" -v listen="127.0.0.1:$PROXY_PORT" \
    -v leader="redis://127.0.0.1:$LEADER_PORT" -v follower="redis://127.0.0.1:$FOLLOWER_PORT" '
    function flush() {
        if (section == "admin" && !seen["token"]) { print "token_file = \"" token "\""; seen["token"] = 1 }
        if (section == "redis" && !seen["follower"]) { print "follower = \"" follower "\""; seen["follower"] = 1 }
    }
    /^\[/ { flush(); section = $0; gsub(/[][ ]/, "", section) }
    section == "admin" && /^listen[ \t]*=/ { print "listen = \"" admin "\""; next }
    section == "admin" && /^#?[ \t]*token_file[ \t]*=/ { print "token_file = \"" token "\""; seen["token"] = 1; next }
    section == "redis" && /^listen[ \t]*=/ { print "listen = \"" listen "\""; next }
    section == "redis" && /^leader[ \t]*=/ { print "leader = \"" leader "\""; next }
    section == "redis" && /^#?[ \t]*follower[ \t]*=/ { print "follower = \"" follower "\""; seen["follower"] = 1; next }
    { print }
    END { flush() }
' config/redis.toml >"$CONFIG"
# The same process also serves ZooKeeper: the [zookeeper] section of config/zookeeper.toml,
# re-pointed at this demo's servers (the [admin]/[replication]/... above are shared).
{
    echo
    echo "# ZooKeeper sidecar in the same process ([zookeeper] of config/zookeeper.toml)"
    awk -v listen="127.0.0.1:$ZK_PROXY_PORT" -v leader="127.0.0.1:$ZK_LEADER_PORT" \
        -v follower="127.0.0.1:$ZK_FOLLOWER_PORT" '
        /^\[/ { section = $0; gsub(/[][ ]/, "", section) }
        section != "zookeeper" { next }
        /^listen[ \t]*=/ { print "listen = \"" listen "\""; next }
        /^leader[ \t]*=/ { print "leader = \"" leader "\""; next }
        /^#?[ \t]*follower[ \t]*=/ { print "follower = \"" follower "\""; next }
        { print }
    ' config/zookeeper.toml
} >>"$CONFIG"
grep -E '^(\[|(listen|leader|follower|token_file)[ \t]*=)' "$CONFIG" | indent
"$BIN" check-config --config "$CONFIG" 2>&1 | indent

# ===========================================================================================
section "4. statemirror run (log: .demo/statemirror.log)"
NO_COLOR=1 "$BIN" run --config "$CONFIG" >"$DEMO/statemirror.log" 2>&1 </dev/null &
PROXY_PID=$!
started "$PROXY_PID"
wait_for "statemirror admin API" 100 curl -fsS "$ADMIN/healthz"
wait_for "statemirror /readyz" 100 curl -fsS "$ADMIN/readyz"
echo "  statemirror pid $PROXY_PID: redis on 127.0.0.1:$PROXY_PORT, zookeeper on 127.0.0.1:$ZK_PROXY_PORT, admin on $ADMIN"
echo "  GET /readyz -> $(curl -fsS "$ADMIN/readyz" | tr -d ' \n')"

# ===========================================================================================
section "5. NiFi-style state workload through the proxy (127.0.0.1:$PROXY_PORT)"
COMPONENTS=20
VERSIONS=3
ids=()
for ((i = 0; i < COMPONENTS; i++)); do
    ids+=("$(cat /proc/sys/kernel/random/uuid)")
done
now_ms=$(($(date +%s) * 1000))
# NiFi's RedisStateProvider stores a component's state map as JSON under nifi/components/<id>.
state_json() { # version, component index
    printf '{"version":%d,"encodingVersion":1,"stateValues":{"listing.timestamp":"%d","processed.count":"%d"}}' \
        "$1" "$((now_ms + $1 * 1000 + $2))" "$(($1 * 100 + $2))"
}
# NiFi's replace(): WATCH, GET (compare the version), MULTI, GETSET, EXEC -- on one connection.
replace_cmds() { # key, version, component index
    printf 'WATCH %s\nGET %s\nMULTI\nGETSET %s %s\nEXEC\n' "$1" "$1" "$1" "'$(state_json "$2" "$3")'"
}

first="nifi/components/${ids[0]}"
echo "component ${ids[0]}, versions 1 and 2 (one redis-cli session, one connection):"
{
    replace_cmds "$first" 1 0
    replace_cmds "$first" 2 0
} >"$DEMO/replace.txt"
"${PCLI[@]}" --no-raw <"$DEMO/replace.txt" >"$DEMO/replace.out"
paste -d '\t' "$DEMO/replace.txt" "$DEMO/replace.out" |
    awk -F '\t' '{ c = $1; if (length(c) > 70) c = substr(c, 1, 67) "..."; printf "  > %-72s %s\n", c, $2 }' | clip 150
# The rest: every component goes through versions 1..VERSIONS, one session per component.
for ((i = 0; i < COMPONENTS; i++)); do
    key="nifi/components/${ids[$i]}"
    for ((v = (i == 0 ? 3 : 1); v <= VERSIONS; v++)); do
        replace_cmds "$key" "$v" "$i"
    done | "${PCLI[@]}" >/dev/null
done
keys=()
for id in "${ids[@]}"; do keys+=("nifi/components/$id"); done
current=$("${PCLI[@]}" MGET "${keys[@]}" | grep -c "\"version\":$VERSIONS," || true)
echo "$COMPONENTS components x $VERSIONS replace transactions: $current of $COMPONENTS keys at version $VERSIONS"
[ "$current" -eq "$COMPONENTS" ] || die "expected every component at version $VERSIONS"

echo "plain SETs with EX (cluster heartbeats, 300 s TTL):"
for n in 1 2 3; do
    printf '  SET nifi/heartbeat/node-%d ... EX 300 -> %s\n' "$n" \
        "$("${PCLI[@]}" SET "nifi/heartbeat/node-$n" "{\"node\":\"nifi-$n\",\"ts\":$now_ms}" EX 300)"
done
echo "one component removed (NiFi deletes state with the component):"
echo "  DEL nifi/components/${ids[$((COMPONENTS - 1))]} -> $("${PCLI[@]}" DEL "nifi/components/${ids[$((COMPONENTS - 1))]}")"
nkeys=$("${PCLI[@]}" KEYS 'nifi/components/*' | grep -c . || true)
echo "KEYS nifi/components/* -> $nkeys keys, e.g.:"
"${PCLI[@]}" KEYS 'nifi/components/*' | sort | head -n 3 | indent

# ===========================================================================================
section "6. mirror status: GET /status"
# The mirror queue depth of protocol $1 (redis, zookeeper), from the per-protocol summary in
# /status .maintenance.mirrors: "<protocol>":{...,"queue_depth":N} (the only "<protocol>"
# object there without nested objects).
queue_depth() {
    curl -fsS "$ADMIN/status" | tr -d ' \n' |
        sed -n "s/.*\"$1\":{[^{}]*\"queue_depth\":\([0-9]*\).*/\1/p"
}
mirror_drained() { [ "$(queue_depth "$1")" = "0" ]; }
wait_for "redis mirror queue drained" 100 mirror_drained redis
# GET /status, pretty-printed, without the top-level sections named in $@ (python3 when
# available, else the raw JSON).
show_status() {
    if command -v python3 >/dev/null 2>&1; then
        curl -fsS "$ADMIN/status" | python3 -c '
import json, sys
status = json.load(sys.stdin)
for k in sys.argv[1:]:
    status.pop(k, None)
print(json.dumps(status, indent=4))
' "$@" | indent
    else
        curl -fsS "$ADMIN/status" | indent
    fi
}
show_status zookeeper
note "(the zookeeper section is shown in section 11)"

section "7. metrics: GET /metrics (selected lines)"
curl -fsS "$ADMIN/metrics" |
    grep -E '^(statemirror_mirrored_writes_total|statemirror_mirror_lag_seconds|statemirror_mirror_queue_depth|statemirror_follower_in_sync|statemirror_requests_total)' |
    grep -vE '^statemirror_requests_total.* 0$' | indent || true
note "(statemirror_requests_total lines at 0 left out)"

# ===========================================================================================
section "8. the two copies"
key=$first
lv=$("${LCLI[@]}" GET "$key")
fv=$("${FCLI[@]}" GET "$key")
echo "key $key"
printf '  %-28s %s\n' "leader   127.0.0.1:$LEADER_PORT" "$lv" "follower 127.0.0.1:$FOLLOWER_PORT" "$fv" | clip 150
[ -n "$lv" ] && [ "$lv" = "$fv" ] || die "leader and follower differ for $key"
echo "  identical: yes"
ttl_l=$("${LCLI[@]}" TTL nifi/heartbeat/node-1)
ttl_f=$("${FCLI[@]}" TTL nifi/heartbeat/node-1)
echo "TTL nifi/heartbeat/node-1: leader ${ttl_l}s, follower ${ttl_f}s"
dl=$("${LCLI[@]}" DBSIZE)
df=$("${FCLI[@]}" DBSIZE)
echo "DBSIZE: leader $dl, follower $df"
[ "$dl" = "$df" ] || die "key counts differ"
missing=0
while read -r k; do
    [ "$("${LCLI[@]}" --no-raw DUMP "$k")" = "$("${FCLI[@]}" --no-raw DUMP "$k")" ] || missing=$((missing + 1))
done < <("${LCLI[@]}" --scan)
echo "every key compared (DUMP on both): $missing differences"
[ "$missing" -eq 0 ] || die "follower differs from leader"

# ===========================================================================================
section "9. maintenance: freeze writes, reads keep working"
echo "\$ statemirror maintenance on --admin $ADMIN   (no token)"
rc=0
"$BIN" maintenance on --admin "$ADMIN" >"$DEMO/maint.out" 2>&1 || rc=$?
indent <"$DEMO/maint.out"
[ "$rc" -ne 0 ] || die "maintenance on without the token should be refused"
echo "  -> refused (exit $rc): PUT/DELETE need the bearer token"
echo
echo "\$ statemirror maintenance on --admin $ADMIN --token-file .demo/admin-token"
"$BIN" maintenance on --admin "$ADMIN" --token-file "$TOKEN_FILE" | indent
echo
out=$("${PCLI[@]}" SET "$first" overwritten)
echo "write through the proxy: SET $first ... -> $out"
case "$out" in READONLY*) ;; *) die "expected READONLY while frozen, got: $out" ;; esac
echo "NiFi's replace while frozen (GETSET refused, EXEC aborted, nothing changes):"
replace_cmds "$first" 4 0 >"$DEMO/replace-frozen.txt"
"${PCLI[@]}" --no-raw <"$DEMO/replace-frozen.txt" >"$DEMO/replace-frozen.out"
paste -d '\t' "$DEMO/replace-frozen.txt" "$DEMO/replace-frozen.out" |
    awk -F '\t' '{ c = $1; if (length(c) > 70) c = substr(c, 1, 67) "..."; printf "  > %-72s %s\n", c, $2 }' | clip 150
echo "read through the proxy: GET $first ->"
"${PCLI[@]}" GET "$first" | clip 150 | indent
"${PCLI[@]}" GET "$first" | grep -q "\"version\":$VERSIONS," || die "read during maintenance failed"
echo "\$ statemirror maintenance status --admin $ADMIN"
"$BIN" maintenance status --admin "$ADMIN" | grep -E '^  "(frozen|frozen_since_unix|follower_in_sync)"' | indent
echo
echo "\$ statemirror maintenance off --admin $ADMIN --token-file .demo/admin-token"
"$BIN" maintenance off --admin "$ADMIN" --token-file "$TOKEN_FILE" | grep -E '^  "frozen"' | indent
out=$("${PCLI[@]}" SET nifi/demo/after-maintenance ok)
echo "write through the proxy again: SET nifi/demo/after-maintenance ok -> $out"
[ "$out" = "OK" ] || die "write after maintenance off failed: $out"
curl -fsS "$ADMIN/metrics" | grep -E '^statemirror_rejected_writes_total' | grep -v ' 0$' | indent || true

# ===========================================================================================
ZK_PROXY=127.0.0.1:$ZK_PROXY_PORT
ZK_LEADER=127.0.0.1:$ZK_LEADER_PORT
ZK_FOLLOWER=127.0.0.1:$ZK_FOLLOWER_PORT
section "10. ZooKeeper: NiFi-style state through the proxy ($ZK_PROXY)"
note "NiFi's ZooKeeperStateProvider keeps a component's state in /nifi/components/<component id>"
note "(binary there; JSON here for readability). One zkCli.sh session per command."
zk_ids=()
for ((i = 0; i < 3; i++)); do
    zk_ids+=("$(cat /proc/sys/kernel/random/uuid)")
done
zk_state() { # version, component index
    printf '{"version":%d,"stateValues":{"listing.timestamp":"%d","processed.count":"%d"}}' \
        "$1" "$((now_ms + $1 * 1000 + $2))" "$(($1 * 100 + $2))"
}
zfirst=/nifi/components/${zk_ids[0]}
zk_show proxy "$ZK_PROXY" create /nifi
zk_show proxy "$ZK_PROXY" create /nifi/components
for ((i = 0; i < ${#zk_ids[@]}; i++)); do
    zk_show proxy "$ZK_PROXY" create "/nifi/components/${zk_ids[$i]}" "$(zk_state 1 "$i")"
done
zk_show proxy "$ZK_PROXY" set "$zfirst" "$(zk_state 2 0)"
echo "\$ zkCli.sh -server $ZK_PROXY get -s $zfirst   (proxy; data and the version lines of the stat)"
zkcli "$ZK_PROXY" get -s "$zfirst" | grep -E '^(\{|dataVersion|dataLength|numChildren)' | clip 140 | indent ||
    die "get $zfirst through the proxy failed"
note "(a persistent sequential node: the follower gets the exact name the leader assigned)"
zk_show proxy "$ZK_PROXY" create -s /nifi/demo-seq- primary-node-1
zk_show proxy "$ZK_PROXY" create -s /nifi/demo-seq- primary-node-2
note "(one component removed: NiFi deletes its state with the component)"
zk_show proxy "$ZK_PROXY" delete "/nifi/components/${zk_ids[2]}"
zk_show proxy "$ZK_PROXY" ls /nifi

# ===========================================================================================
section "11. ZooKeeper mirror status: GET /status (zookeeper section)"
wait_for "zookeeper mirror queue drained" 100 mirror_drained zookeeper
show_status maintenance redis version
zmirrored=$(curl -fsS "$ADMIN/metrics" |
    awk '$1 == "statemirror_mirrored_writes_total{protocol=\"zookeeper\"}" { print $2 }')
echo "zookeeper writes mirrored to the follower: ${zmirrored:-?} (2 + ${#zk_ids[@]} creates, 1 set, 2 sequential creates, 1 delete = $((2 + ${#zk_ids[@]} + 1 + 2 + 1)))"

# ===========================================================================================
section "12. the follower's copy (zkCli.sh against the follower $ZK_FOLLOWER directly)"
zk_show follower "$ZK_FOLLOWER" ls /nifi
zk_show follower "$ZK_FOLLOWER" ls /nifi/components
zk_show follower "$ZK_FOLLOWER" get "$zfirst"
# The same answer from the leader and the follower (both directly, not through the proxy).
zk_same() { # command...
    local lz fz
    lz=$(zkcli "$ZK_LEADER" "$@") || die "$* on the leader failed"
    fz=$(zkcli "$ZK_FOLLOWER" "$@") || die "$* on the follower failed"
    [ "$lz" = "$fz" ] || die "leader and follower differ for '$*': '$lz' vs '$fz'"
}
zk_same ls /nifi
zk_same ls /nifi/components
zk_same get "$zfirst"
echo "leader $ZK_LEADER and follower agree on ls /nifi, ls /nifi/components and get $zfirst" | clip 150

echo
echo "\$ echo isro | bash /dev/tcp -> proxy $ZK_PROXY   (four-letter word: read-only or rw?)"
isro=$(four_letter "$ZK_PROXY_PORT" isro || true)
echo "  ${isro:-<no reply>}"
[ -n "$isro" ] || die "no reply to isro from the proxy"

# ===========================================================================================
section "13. verification and catch-up"
# `statemirror verify` prints a JSON report per protocol; this shows its counts and, per
# difference, the key and (for NiFi state) the component and entries that differ.
verify_summary() {
    if command -v python3 >/dev/null 2>&1; then
        python3 -c '
import json, sys
report = json.load(sys.stdin)
for proto, r in report.items():
    if "error" in r:
        print("%s: error %s" % (proto, r["error"]))
        continue
    print("%s: equal %d, different %d, missing on follower %d, extra on follower %d" % (
        proto, r["equal"], r["different"], r["missing_on_follower"], r["extra_on_follower"]))
    for d in r["differences"][:5]:
        detail = " (%s)" % d["detail"] if d.get("detail") else ""
        print("  %s: %s%s" % (d["kind"], d["key"], detail))
        nifi = d.get("nifi")
        for e in (nifi or {}).get("entries", []):
            print("    component %s, entry %s: leader %r, follower %r" % (
                nifi["component"], e["entry"], e["leader"], e["follower"]))
'
    else
        cat
    fi
}
echo "\$ statemirror verify --config .demo/statemirror.toml"
rc=0
"$BIN" verify --config "$CONFIG" >"$DEMO/verify1.json" 2>"$DEMO/verify1.err" || rc=$?
verify_summary <"$DEMO/verify1.json" | clip 160 | indent
[ "$rc" -eq 0 ] || die "verify found differences or failed (exit $rc): $(cat "$DEMO/verify1.err")"
echo "  -> exit 0: leader and follower agree, key by key and znode by znode"

echo
note "Someone edits the follower behind statemirror's back: one NiFi state entry changed, one key deleted."
bad=$(printf '{"version":%d,"encodingVersion":1,"stateValues":{"listing.timestamp":"%d","processed.count":"%d"}}' \
    "$VERSIONS" 1600000000000 "$((VERSIONS * 100 + 1))")
echo "  follower: SET nifi/components/${ids[1]} <listing.timestamp changed> -> $("${FCLI[@]}" SET "nifi/components/${ids[1]}" "$bad")"
echo "  follower: DEL nifi/heartbeat/node-2 -> $("${FCLI[@]}" DEL nifi/heartbeat/node-2)"
echo "\$ statemirror verify --config .demo/statemirror.toml"
rc=0
"$BIN" verify --config "$CONFIG" >"$DEMO/verify2.json" 2>/dev/null || rc=$?
verify_summary <"$DEMO/verify2.json" | clip 160 | indent
[ "$rc" -eq 1 ] || die "verify should report the differences (exit 1), got exit $rc"
grep -q "listing.timestamp" "$DEMO/verify2.json" || die "verify did not name the NiFi entry"
echo "  -> exit 1, naming the component and the state entry, with both values"

echo
echo "\$ statemirror resync --config .demo/statemirror.toml --wait   (POST /resync with the admin token from the config)"
"$BIN" resync --config "$CONFIG" --wait --timeout-seconds 120 >"$DEMO/resync.json" || die "resync failed"
if command -v python3 >/dev/null 2>&1; then
    python3 -c '
import json, sys
for proto, last in json.load(sys.stdin).items():
    print("%s: %s in %.3f s: %d scanned, %d copied, %d deleted" % (proto, last["outcome"],
        last["duration_seconds"], last["scanned"], last["copied"], last["deleted"]))
' <"$DEMO/resync.json" | indent
else
    indent <"$DEMO/resync.json"
fi
"$BIN" verify --config "$CONFIG" >"$DEMO/verify3.json" 2>/dev/null || die "verify after the resync found differences: $(cat "$DEMO/verify3.json")"
verify_summary <"$DEMO/verify3.json" | indent
echo "  -> repaired while the proxy kept serving"

echo
note "The follower Redis is killed and comes back empty (SIGKILL, no persistence)."
disown "$FOLLOWER_REDIS_PID" 2>/dev/null || true # no "Killed" job notice
kill -9 "$FOLLOWER_REDIS_PID" 2>/dev/null || true
follower_gone() { ! redis-cli -h 127.0.0.1 -p "$FOLLOWER_PORT" PING >/dev/null 2>&1; }
wait_for "the follower redis-server to die" 100 follower_gone
redis-server --port "$FOLLOWER_PORT" --bind 127.0.0.1 --save '' --appendonly no \
    --dir "$DEMO/follower" --logfile "$DEMO/follower/redis.log" </dev/null &
started $!
wait_for "follower redis-server restarted" 100 redis-cli -h 127.0.0.1 -p "$FOLLOWER_PORT" PING
echo "  follower DBSIZE right after the restart: $("${FCLI[@]}" DBSIZE)"
echo "  a write through the proxy meanwhile: SET nifi/demo/during-outage 1 -> $("${PCLI[@]}" SET nifi/demo/during-outage 1)"
resynced() {
    curl -fsS "$ADMIN/status" | tr -d ' \n' | grep -q '"redis":{.*"in_sync":true' &&
        [ "$("${FCLI[@]}" DBSIZE)" = "$("${LCLI[@]}" DBSIZE)" ]
}
wait_for "the follower to be resynced" 300 resynced
grep -E 'follower restarted|full resync (started|ended)' "$DEMO/statemirror.log" | grep redis | tail -n 3 |
    sed -E 's/^[^ ]+ +//' | clip 160 | indent
echo "  follower DBSIZE now: $("${FCLI[@]}" DBSIZE) (leader $("${LCLI[@]}" DBSIZE))"
"$BIN" verify --config "$CONFIG" >"$DEMO/verify4.json" 2>/dev/null || die "verify after the follower restart found differences"
verify_summary <"$DEMO/verify4.json" | indent
curl -fsS "$ADMIN/metrics" |
    grep -E '^statemirror_(resyncs_total|resync_copied_keys_total|resync_deleted_keys_total|verify_differences|follower_in_sync)' |
    grep -v ' 0$' | indent || true

# ===========================================================================================
finished=1
section "done"
if [ "${DEMO_KEEP:-0}" = "1" ]; then
    cat <<EOF
Everything is still running (DEMO_KEEP=1):
  proxy     redis-cli -p $PROXY_PORT
            $ZKCLI -server $ZK_PROXY
  leader    redis-cli -p $LEADER_PORT
            $ZKCLI -server $ZK_LEADER
  follower  redis-cli -p $FOLLOWER_PORT
            $ZKCLI -server $ZK_FOLLOWER
  admin     curl -s $ADMIN/status
            $BIN maintenance status --admin $ADMIN
  files     .demo/ (statemirror.toml, statemirror.log, admin-token, zk-*/server.log)
Stop it with: scripts/demo.sh stop
EOF
else
    echo "Demo finished OK; stopping the proxy, both redis-servers and both ZooKeeper servers (DEMO_KEEP=1 keeps them)."
fi
