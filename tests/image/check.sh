#!/usr/bin/env bash
# tests/image/check.sh [IMAGE] - runs the built sidecar image (`make image-test`).
#   1. `fastproxy --version` prints the version in pyproject.toml;
#   2. `fastproxy init --dry-run`, run as the injected init container runs
#      (root, NET_ADMIN + NET_RAW), prints the iptables rules and exits 0;
#   3. relay: one container runs a TCP echo server (python3) and `fastproxy run`
#      with an explicit listener in front of it; `exec` in the same container
#      waits for /ready, sends 1 MiB through the listener and compares the echo;
#      then SIGTERM (`stop`) must end the proxy with status 0.
# Every container has --network none: its own network namespace with loopback
# only, so no traffic leaves it. Containers are removed by ID.
# Engine: $ENGINE if set, else docker when an engine answers, else podman (with
# the storage of shared/tools/container-build.sh: $W/env, W=/tmp/container-build).
set -uo pipefail
cd "$(dirname "$0")"
IMAGE=${1:-${IMAGE:-localhost/fastproxy:dev}}
if [ -z "${ENGINE:-}" ]; then
    if command -v docker >/dev/null && docker info >/dev/null 2>&1; then ENGINE=docker; else ENGINE=podman; fi
fi
if [ "$ENGINE" = podman ] && [ -z "${CONTAINERS_STORAGE_CONF:-}" ] && [ -f "${W:-/tmp/container-build}/env" ]; then
    . "${W:-/tmp/container-build}/env"
fi
command -v "$ENGINE" >/dev/null || { echo "image check: $ENGINE not found (build with make image first)" >&2; exit 2; }
"$ENGINE" image inspect "$IMAGE" >/dev/null 2>&1 || { echo "image check: no image $IMAGE (make image)" >&2; exit 2; }

passed=0 failed=0 cid="" tmp=$(mktemp -d)
pass() { passed=$((passed + 1)); echo "ok - $*"; }
fail() { failed=$((failed + 1)); echo "FAIL - $*"; }
cleanup() { [ -n "$cid" ] && "$ENGINE" rm -f "$cid" >/dev/null 2>&1; rm -rf "$tmp"; }
trap cleanup EXIT
RUN=("$ENGINE" run --rm --network none)
echo "image check: $IMAGE with $ENGINE ($("$ENGINE" image inspect --format '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}'))"

# 1. --version
want="fastproxy $(sed -n 's/^version *= *"\(.*\)"/\1/p' ../../pyproject.toml | head -n1)"
got=$("${RUN[@]}" "$IMAGE" --version 2>&1)
if [ "$got" = "$want" ]; then pass "--version prints '$got'"; else fail "--version: want '$want', got '$got'"; fi

# 2. init --dry-run, as the init container runs it
if "${RUN[@]}" --user 0 --cap-add NET_ADMIN --cap-add NET_RAW "$IMAGE" init --dry-run >"$tmp/rules" 2>"$tmp/init.err" \
   && grep -q -- '-j REDIRECT --to-ports 15001' "$tmp/rules" \
   && grep -q -- '-j REDIRECT --to-ports 15006' "$tmp/rules" \
   && grep -q -- '--uid-owner 1337' "$tmp/rules"; then
    pass "init --dry-run prints the rules ($(grep -c -- '^-A' "$tmp/rules") rules; REDIRECT to 15001/15006, uid 1337 excluded)"
    sed 's/^/    /' "$tmp/rules"
else
    fail "init --dry-run"; sed 's/^/    /' "$tmp/rules" "$tmp/init.err"
fi

# 3. relay inside one container
LISTEN_PORT=10000 ECHO_PORT=10001
cat >"$tmp/relay.yaml" <<YAML
settings:
  workers: 2
  drain_seconds: 2
listeners:
  - name: relay
    address: 127.0.0.1:$LISTEN_PORT
    tcp_proxy: {cluster: echo}
clusters:
  - name: echo
    endpoints: [{address: "127.0.0.1:$ECHO_PORT"}]
YAML
chmod 0755 "$tmp"; chmod 0644 "$tmp/relay.yaml"
if cid=$("$ENGINE" run -d --network none -v "$tmp/relay.yaml:/etc/fastproxy/relay.yaml:ro" -v "$PWD:/check:ro" \
        --entrypoint sh "$IMAGE" \
        -c "python3 /check/echo_server.py $ECHO_PORT & exec fastproxy run --config /etc/fastproxy/relay.yaml"); then
    if "$ENGINE" exec "$cid" python3 /check/relay_client.py "$LISTEN_PORT" "$ECHO_PORT" relay | sed 's/^/    /'; then
        pass "relay inside the container (as $("$ENGINE" exec "$cid" id -un), uid $("$ENGINE" exec "$cid" id -u))"
    else
        fail "relay inside the container"
    fi
    "$ENGINE" stop -t 20 "$cid" >/dev/null
    rc=$("$ENGINE" inspect --format '{{.State.ExitCode}}' "$cid")
    if [ "$rc" = 0 ]; then pass "SIGTERM: fastproxy run exited 0"; else fail "SIGTERM: fastproxy run exited $rc"; fi
    [ "$failed" = 0 ] || { echo "    container log (tail):"; "$ENGINE" logs "$cid" 2>&1 | tail -n 40 | sed 's/^/    /'; }
    "$ENGINE" rm -f "$cid" >/dev/null && cid=""
else
    fail "relay: the container did not start"
fi

echo "image: $passed passed, $failed failed"
[ "$failed" = 0 ]
