# Shell functions shared by the benchmark scripts (scripts/bench, scripts/bench-ejabberd).
# Sourced, not run. The caller sets `me` (its name, for messages) before sourcing.

say() { echo "== $*" >&2; }

# Whether anything listens on TCP port $1.
port_busy() { [ -n "$(ss -Hltn "sport = :$1" 2>/dev/null)" ]; }

# A port nothing listens on (other benchmarks may run on this machine: never share theirs),
# below the kernel's ephemeral range: a port from that range may be taken by an outgoing
# connection (of the load tester, or between nodes) before the node binds it.
free_port() {
    local p low
    low="$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)"
    [ "$low" -gt 11000 ] 2>/dev/null || low=32768
    for _ in $(seq 200); do
        p=$((10000 + RANDOM % (low - 10000)))
        port_busy "$p" || { echo "$p"; return 0; }
    done
    echo "$me: no free port found" >&2
    return 1
}

# Whether process $1 is the one listening on port $2 (so that a readiness probe answered by
# someone else's server is not taken for ours).
owns_port() { ss -Hltnp "sport = :$2" 2>/dev/null | grep -q "pid=$1,"; }

# Stops process $1: TERM, up to 10 s, then KILL.
stop_pid() {
    local pid="$1"
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
    kill "$pid" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
}

# Writes the chat-node configuration benchmark runs need to file $1: the per-user send
# allowance would cap throughput and the login allowances would cap the set-up
# (docs/benchmarks.md, "A configuration for benchmark nodes"). With $2 = light-hashing,
# password hashes are made cheap too (set-ups of thousands of users).
write_bench_node_config() {
    cat > "$1" <<EOF
# Written by $me: throughput runs must not be capped by the per-user send allowance
# (docs/benchmarks.md), nor set-up by the login ones.
[rate_limits]
sends_per_second = 1000000
logins_per_minute_per_ip = 1000000
logins_per_minute_per_account = 1000000
EOF
    if [ "${2:-}" = light-hashing ]; then
        printf '[auth]\nargon2_memory_kib = 8\n' >> "$1"
    fi
}

# Waits until chat-node process $1 answers ready on HTTP port $2 with at least $3 ring
# members (default 1); on failure prints the tail of log $4 and returns 1.
wait_node_ready() {
    local pid="$1" port="$2" members="${3:-1}" log="$4" body=""
    for _ in $(seq 600); do
        kill -0 "$pid" 2>/dev/null || break
        body="$(curl -s -m 2 "http://127.0.0.1:$port/readyz" 2>/dev/null || true)"
        if echo "$body" | grep -q '"ready":true' \
            && [ "$(echo "$body" | jq '.members | length' 2>/dev/null || echo 0)" -ge "$members" ]; then
            break
        fi
        sleep 0.1
    done
    if ! echo "$body" | grep -q '"ready":true' || ! owns_port "$pid" "$port"; then
        echo "$me: chat-node (pid $pid) is not ready on port $port; its log:" >&2
        tail -20 "$log" >&2
        return 1
    fi
    if [ "$(echo "$body" | jq '.members | length')" -lt "$members" ]; then
        echo "$me: chat-node (pid $pid) sees fewer than $members members: $body" >&2
        return 1
    fi
}

# The machine, for the record of a run: sets commit, nproc_n, load_before, kernel and
# fsync_probe (a probe file is written in directory $1).
record_machine() {
    commit="$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo '?')"
    nproc_n="$(nproc)"
    load_before="$(cut -d' ' -f1-3 /proc/loadavg)"
    kernel="$(uname -r)"
    fsync_probe="$(cd "$1" && dd if=/dev/zero of=fsync-probe bs=4k count=100 oflag=dsync 2>&1 | tail -1 \
        | sed -E 's/.*copied, ([0-9.]+) s.*/\1/' \
        | awk '{ printf "%.2f ms per synced 4 KiB write (dd oflag=dsync, 100 writes)", $1 * 10 }' || true)"
    rm -f "$1/fsync-probe"
}

# One line per run from its JSON report.
brief() {
    jq -r '[
        (.check.counts | to_entries | map(.value) | add | if . == 0 then "PASS" else "FAIL" end),
        "delivery p50 \(.latency.send_delivery.p50_us // "-") us",
        "p99 \(.latency.send_delivery.p99_us // "-") us",
        "acks/s \(.throughput.acks_per_sec | floor)",
        "deliveries/s \(.throughput.deliveries_per_sec | floor)",
        "server \(.server.cores // 0 | . * 100 | floor / 100) cores",
        "errors \(.errors | to_entries | map(.value) | add // 0)"
    ] | join("  ")' "$1" 2>/dev/null || echo "(no report)"
}
