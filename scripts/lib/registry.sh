# A local OCI registry for the scripts (sourced, not run): Debian's docker-registry serving plain
# HTTP on 127.0.0.1, on a free port, with its config, storage and log in a directory the caller
# owns and removes.
#
#   registry_start DIR   start it with DIR/registry.yml, DIR/registry-data and DIR/registry.log;
#                        waits until GET /v2/ answers (up to 10 s a try, 5 tries on other ports)
#                        and sets registry_pid and registry_port; on failure prints the last log
#                        to stderr and returns 1.
#   registry_stop        stop it (kill by PID, reap); harmless when it is not running.
#
# The caller calls registry_stop from its EXIT trap.

registry_pid=
registry_port=

# GET /v2/ on 127.0.0.1:PORT answers 200 from a registry.
registry_answers() {
    local reply
    reply=$(timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"
        printf "GET /v2/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n" >&3
        cat <&3' _ "$1" 2>/dev/null) || return 1
    [[ $reply == "HTTP/1."?" 200"* && ${reply,,} == *"docker-distribution-api-version: registry/2.0"* ]]
}

# Something listens on 127.0.0.1:PORT.
registry_port_in_use() {
    timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$1" 2>/dev/null
}

registry_stop() {
    if [[ -n $registry_pid ]]; then
        kill "$registry_pid" 2>/dev/null || true
        wait "$registry_pid" 2>/dev/null || true
    fi
    registry_pid=
}

registry_start() {
    local dir=$1 port
    for _ in 1 2 3 4 5; do
        port=$((20000 + RANDOM % 40000))
        registry_port_in_use "$port" && continue
        cat >"$dir/registry.yml" <<EOF
version: 0.1
log:
  level: error
storage:
  filesystem:
    rootdirectory: $dir/registry-data
http:
  addr: 127.0.0.1:$port
EOF
        docker-registry serve "$dir/registry.yml" >"$dir/registry.log" 2>&1 &
        registry_pid=$!
        for _ in $(seq 100); do # up to 10 s
            if registry_answers "$port"; then
                registry_port=$port
                return 0
            fi
            kill -0 "$registry_pid" 2>/dev/null || break
            sleep 0.1
        done
        registry_stop
    done
    echo "docker-registry did not start; its last log:" >&2
    cat "$dir/registry.log" >&2 2>/dev/null || true
    return 1
}
