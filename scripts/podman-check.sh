#!/usr/bin/env bash
# Build the production image (Dockerfile) with podman and smoke-test it. Root only; no Docker engine or
# registry needed:
#   1. base image localhost/debian:bookworm-slim: debootstrap (minbase, slimmed like the official image) from the
#      Debian mirror this machine's apt uses, imported into podman — once; cached in podman's storage
#   2. podman build --format docker (HEALTHCHECK needs it), pip pointed at the same index as the host's pip
#   3. podman run -p 127.0.0.1:PORT:2525; wait until the image's HEALTHCHECK passes (220 banner)
#   4. send one mail with python smtplib; check it reached the Maildir under /var/lib/detox
#   5. stop and remove the container and its volume (the image is kept: rebuilds reuse its layers)
#
# Options:
#   --rebuild-base   debootstrap the base image again      --no-cache   podman build --no-cache
#   --keep           leave the container running           --timeout S  health wait (default 90)
#   --stand-in       run a plain aiosmtpd sink instead of `detox serve` (tests the image mechanics while
#                    detox serve doesn't work yet; skips the Maildir check)
# Exit status: 0 OK; 1 the image is broken (build, start, health or delivery failed); 3 skipped because this
# machine can't build/run containers (not root, podman unusable, Debian mirror unreachable).
# Environment: DETOX_IMAGE (default localhost/detox:check), DETOX_BASE_IMAGE (localhost/debian:bookworm-slim),
#   PIP_INDEX_URL / PIP_EXTRA_INDEX_URL / PIP_CERT (default: what the host's pip is configured with).
set -euo pipefail

cd "$(dirname "$0")/.."
IMAGE=${DETOX_IMAGE:-localhost/detox:check}
BASE=${DETOX_BASE_IMAGE:-localhost/debian:bookworm-slim}
SUITE=bookworm
rebuild_base=0 no_cache=() keep=0 stand_in=0 health_timeout=90
while [ $# -gt 0 ]; do
    case "$1" in
        --rebuild-base) rebuild_base=1 ;;
        --no-cache) no_cache=(--no-cache) ;;
        --keep) keep=1 ;;
        --stand-in) stand_in=1 ;;
        --timeout) health_timeout=$2; shift ;;
        -h | --help) awk 'NR > 1 && /^#/ { print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) echo "podman-check: unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done

global=() run_opts=()
now() { echo "${EPOCHREALTIME/./}"; }   # microseconds
since() { local d=$(($(now) - $1)); printf '%d.%d' $((d / 1000000)) $((d / 100000 % 10)); }
t0=$(now)
# podman without systemd can't create healthcheck timers; it says so on every run/stop/rm. Hide just that.
pm() { podman "${global[@]}" "$@" 2> >(grep -v 'unable to get systemd connection' >&2); }
say() { echo "podman-check [+$(since "$t0")s]: $*"; }
die() { echo "podman-check: FAILED: $*" >&2; exit 1; }
skip() { echo "podman-check: SKIPPED: $*" >&2; exit 3; }

[ "$(id -u)" -eq 0 ] || skip "run as root (rootful podman; debootstrap)"
if ! command -v podman >/dev/null 2>&1 || ! command -v debootstrap >/dev/null 2>&1 \
    || ! command -v runc >/dev/null 2>&1; then
    say "installing podman/debootstrap/runc"
    scripts/install-system-deps.sh --podman --strict || skip "could not install podman/debootstrap/runc"
fi

work=$(mktemp -d "${TMPDIR:-/var/tmp}/detox-podman-check.XXXXXX")
container=""
cleanup() {
    if [ -n "$container" ] && [ "$keep" -eq 0 ]; then
        pm rm -f -v "$container" >/dev/null 2>&1 || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 143' TERM INT   # so that cleanup runs when CI's timeout stops us

# ------------------------------------------------------------------------------------ base image (cached)
apt_mirrors() {
    # Prints "MAIN_URI SECURITY_URI" from /etc/apt/sources.list{,.d/*.list,.d/*.sources} (one-line and deb822).
    python3 - "$SUITE" <<'EOF'
import glob, sys
suite = sys.argv[1]
entries = []  # (uri, suites)
for path in ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*.list"))]:
    try:
        lines = open(path, encoding="utf-8").read().splitlines()
    except OSError:
        continue
    for line in lines:
        words = line.split("#", 1)[0].split()
        if len(words) < 3 or words[0] != "deb":
            continue
        words = words[1:]
        if words[0].startswith("["):
            while words and not words[0].endswith("]"):
                words.pop(0)
            words.pop(0)
        if len(words) >= 2:
            entries.append((words[0], [words[1]]))
for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
    for stanza in open(path, encoding="utf-8").read().split("\n\n"):
        fields = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line:
                continue
            key, value = line.split(":", 1)
            fields[key.strip().lower()] = value.split()
        if "deb" in fields.get("types", []) and fields.get("enabled", ["yes"])[0] != "no":
            for uri in fields.get("uris", []):
                entries.append((uri, fields.get("suites", [])))
main = next((u for u, s in entries if suite in s and "security" not in u), "http://deb.debian.org/debian")
security = next((u for u, s in entries if f"{suite}-security" in s), main.rstrip("/") + "-security")
print(main.rstrip("/"), security.rstrip("/"))
EOF
}

build_base() {
    local main security rootfs started
    read -r main security < <(apt_mirrors)
    rootfs="$work/rootfs"
    started=$(now)
    say "debootstrap --variant=minbase $SUITE from $main (security: $security)"
    debootstrap --variant=minbase "$SUITE" "$rootfs" "$main" >"$work/debootstrap.log" 2>&1 \
        || { tail -30 "$work/debootstrap.log" >&2; skip "debootstrap from $main failed (log above)"; }
    say "debootstrap took $(since "$started")s"

    # Slim it down the way the official -slim images are (debuerreotype).
    rm -f "$rootfs/etc/apt/sources.list"
    cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $main
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $security
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    cat >"$rootfs/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
    cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache ""; Dir::Cache::srcpkgcache "";
EOF
    echo 'Acquire::Languages "none";' >"$rootfs/etc/apt/apt.conf.d/docker-no-languages"
    printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"
    chmod 0755 "$rootfs/usr/sbin/policy-rc.d"
    find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
    find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
    rm -rf "$rootfs"/usr/share/{man,info,groff,lintian,linda}/* "$rootfs"/usr/share/locale/*
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
        "$rootfs"/var/cache/ldconfig/aux-cache "$rootfs"/var/log/*.log "$rootfs"/var/log/apt/*
    : >"$rootfs/etc/resolv.conf"   # debootstrap copied the host's; the runtime provides its own
    rm -f "$rootfs/etc/hostname"

    started=$(now)
    tar --numeric-owner -C "$rootfs" -c . | podman import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["bash"]' \
        --message "debootstrap --variant=minbase $SUITE $main (slimmed)" - "$BASE" >/dev/null
    rm -rf "$rootfs"
    say "imported $BASE ($(podman image inspect -f '{{.Size}}' "$BASE" | numfmt --to=iec)) in $(since "$started")s"
}

if [ "$rebuild_base" -eq 1 ] && podman image exists "$BASE"; then
    podman rmi -f "$BASE" >/dev/null
fi
if podman image exists "$BASE"; then
    say "base image $BASE cached"
else
    build_base
fi

# --------------------------------------------------------- how containers can run here (runtime, ulimits)
# Podman's defaults can fail on VMs/sandboxes: crun refuses a "hybrid" cgroup v1/v2 layout that has
# controllers in the v2 tree, and the default RLIMIT_NOFILE/NPROC (1048576/4194304) may exceed the host's
# hard limits. Try the defaults, then the host's own limits, then runc.
hard_nofile=$(ulimit -Hn) hard_nproc=$(ulimit -Hu)
[ "$hard_nofile" = unlimited ] && hard_nofile=1048576
pid_max=$(cat /proc/sys/kernel/pid_max 2>/dev/null || echo 32768)
[ "$hard_nproc" = unlimited ] && hard_nproc=$pid_max
[ "$hard_nproc" -gt "$pid_max" ] && hard_nproc=$pid_max
limits=(--ulimit "nofile=$hard_nofile:$hard_nofile" --ulimit "nproc=$hard_nproc:$hard_nproc")
probe() { podman "${global[@]}" run --rm "${run_opts[@]}" "$BASE" true >"$work/probe.log" 2>&1; }
if probe; then
    say "containers run with podman's defaults"
else
    run_opts=("${limits[@]}")
    if probe; then
        say "containers need the host's ulimits: ${run_opts[*]}"
    elif command -v runc >/dev/null 2>&1 && global=(--runtime runc) && probe; then
        say "containers need runc and the host's ulimits: ${global[*]} ${run_opts[*]}"
    else
        cat "$work/probe.log" >&2
        skip "podman cannot start a container here (see above)"
    fi
fi

# ------------------------------------------------------------------------------------------------- build
pip_config() {  # the host pip's effective setting, e.g. pip_config index-url
    local pip=(python3 -m pip)
    [ -x .venv/bin/python ] && pip=(.venv/bin/python -m pip)
    "${pip[@]}" config get "global.$1" 2>/dev/null || true
}
index=${PIP_INDEX_URL:-$(pip_config index-url)}
index=${index:-https://pypi.org/simple}
extra=()
for url in ${PIP_EXTRA_INDEX_URL:-$(pip_config extra-index-url)}; do
    case "$url" in
        http://* | https://*) extra+=("$url") ;;
        *) say "note: host pip also uses $url (not reachable from a build container; skipped)" ;;
    esac
done
build_args=(--build-arg "BASE_IMAGE=$BASE" --build-arg "PIP_INDEX_URL=$index")
[ ${#extra[@]} -gt 0 ] && build_args+=(--build-arg "PIP_EXTRA_INDEX_URL=${extra[*]}")
cert=${PIP_CERT:-$(pip_config cert)}
secret=()
if [ -n "$cert" ] && [ -s "$cert" ]; then
    # The host's pip verifies TLS with this bundle (it may hold a proxy's CA); give it to pip in the build
    # as a secret, so it is not stored in any image layer.
    secret=(--secret "id=pip_cert,src=$cert")
else
    : >"$work/empty-cert"
    secret=(--secret "id=pip_cert,src=$work/empty-cert")
fi
say "podman build $IMAGE (pip index $index${extra:+ + ${extra[*]}}${cert:+, CA bundle $cert})"
started=$(now)
if ! podman "${global[@]}" build --format docker --pull=never --layers "${no_cache[@]}" "${run_opts[@]}" \
    "${build_args[@]}" "${secret[@]}" -t "$IMAGE" -f Dockerfile . 2>&1 | tee "$work/build.log" \
    | { grep -E --line-buffered '^(STEP|COMMIT|Successfully|Error|error)' || true; }; then
    tail -40 "$work/build.log" >&2
    die "podman build failed (log above)"
fi
say "build took $(since "$started")s; image $(podman image inspect -f '{{.Size}}' "$IMAGE" | numfmt --to=iec)"
podman image inspect -f '{{json .Config.Healthcheck}}' "$IMAGE" | grep -q CMD \
    || die "the image has no HEALTHCHECK (built in OCI format?)"

# --------------------------------------------------------------------------------------------------- run
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
container="detox-check-$$"
entry=()
if [ "$stand_in" -eq 1 ]; then
    entry=(--entrypoint /opt/detox/bin/python "$IMAGE" -m aiosmtpd -n -l 0.0.0.0:2525 -c aiosmtpd.handlers.Sink)
else
    entry=("$IMAGE")
fi
started=$(now)
pm run -d --name "$container" "${run_opts[@]}" -p "127.0.0.1:$port:2525" "${entry[@]}" >/dev/null
say "started container $container (127.0.0.1:$port -> 2525)"

deadline=$(($(date +%s) + health_timeout))
until podman healthcheck run "$container" >"$work/health.log" 2>&1; do
    state=$(podman inspect -f '{{.State.Status}}' "$container" 2>/dev/null || echo gone)
    if [ "$state" != running ]; then
        podman logs "$container" 2>&1 | tail -40 >&2
        die "container is $state before becoming healthy (logs above)"
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
        cat "$work/health.log" >&2
        podman logs "$container" 2>&1 | tail -40 >&2
        die "not healthy after ${health_timeout}s"
    fi
    sleep 0.5
done
say "healthy (HEALTHCHECK passed) $(since "$started")s after start"

python3 - "$port" <<'EOF'
import smtplib, sys
from email.message import EmailMessage
msg = EmailMessage()
msg["From"] = "sender@example.jp"
msg["To"] = "staff@city.example.lg.jp"
msg["Subject"] = "podman-check テスト"
msg.set_content("podman-check: 無害化ゲートウェイの疎通確認です。\nhttps://example.com/\n")
with smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=30) as client:
    code, banner = client.ehlo()
    print("podman-check: EHLO", code, banner.decode(errors="replace").splitlines()[0])
    refused = client.send_message(msg)
    assert not refused, refused
print("podman-check: message accepted (250)")
EOF

if [ "$stand_in" -eq 0 ]; then
    deadline=$(($(date +%s) + 30))
    until delivered=$(podman exec "$container" sh -c \
        'find /var/lib/detox -path "*/new/*" -type f 2>/dev/null | head -1') && [ -n "$delivered" ]; do
        [ "$(date +%s)" -lt "$deadline" ] || { podman logs "$container" 2>&1 | tail -40 >&2; die "no delivery in the Maildir after 30s"; }
        sleep 0.5
    done
    say "delivered to $delivered:"
    podman exec "$container" sh -c "sed -n '1,40p' '$delivered'" | sed 's/^/    | /'
fi

started=$(now)
if [ "$keep" -eq 1 ]; then
    say "kept running: $container on 127.0.0.1:$port (remove with: podman rm -f -v $container)"
else
    pm stop -t "$((stand_in ? 1 : 10))" "$container" >/dev/null   # the stand-in, as PID 1, ignores SIGTERM
    pm rm -v "$container" >/dev/null
    container=""
    say "stopped and removed the container in $(since "$started")s"
fi
say "OK — total $(since "$t0")s"
