#!/usr/bin/env bash
# Install and configure what builds and runs the Lambda image on a machine without Docker:
# podman with runc, debootstrap for the local base image, and Debian's docker-registry for the
# push test. Idempotent: a second run changes nothing and takes about a second.
#
# Why the configuration: podman's default container ulimits (nofile=1048576) exceed the hard
# limits of sandboxed CI hosts, where every `podman run` would then fail in setrlimit; and runc
# is the runtime we test with (crun is not installed).
set -euo pipefail

PACKAGES=(podman runc debootstrap docker-registry)
CONF_DIR=/etc/containers/containers.conf.d
CONF_FILE="$CONF_DIR/50-breedserve.conf"

say() { printf 'image_setup: %s\n' "$*" >&2; }

as_root() {
    if [[ $(id -u) -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        say "need root (or sudo) to run: $*"
        exit 1
    fi
}

missing=()
for pkg in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$pkg")
    fi
done

if ((${#missing[@]})); then
    if ! command -v apt-get >/dev/null 2>&1; then
        say "apt-get not found: install ${missing[*]} with your package manager"
        exit 1
    fi
    say "installing ${missing[*]} from Debian"
    as_root apt-get update -qq
    # The registry package would start a system-wide registry on :5000; the test starts its own
    # on a free loopback port, so forbid service starts during the install.
    policy=/usr/sbin/policy-rc.d
    added_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
        as_root chmod 0755 "$policy"
        added_policy=1
    fi
    status=0
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" ca-certificates >/dev/null || status=$?
    if ((added_policy)); then
        as_root rm -f "$policy"
    fi
    if ((status)); then
        say "apt-get install failed (exit $status)"
        exit "$status"
    fi
fi

desired=$(cat <<'EOF'
# Written by infra/image_setup.sh (breedserve): see the comment at the top of that script.
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]

[engine]
runtime = "runc"
EOF
)

if [[ ! -f $CONF_FILE ]] || [[ "$(cat "$CONF_FILE")" != "$desired" ]]; then
    say "writing $CONF_FILE"
    as_root mkdir -p "$CONF_DIR"
    printf '%s\n' "$desired" | as_root tee "$CONF_FILE" >/dev/null
fi

runtime=$(podman info --format '{{.Host.OCIRuntime.Name}}' 2>/dev/null || true)
if [[ $runtime != runc ]]; then
    say "podman does not answer with runc as its runtime (got '${runtime:-nothing}'): see 'podman info'"
    exit 1
fi
say "podman $(podman version --format '{{.Client.Version}}') with runc is ready"
