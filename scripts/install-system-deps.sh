#!/usr/bin/env bash
# Install the Debian 12 packages detox and its tests need — only the ones that are missing.
#
#   scripts/install-system-deps.sh            runtime + test + build packages (make setup, .ci/run)
#   scripts/install-system-deps.sh --podman   also what scripts/podman-check.sh needs (podman, debootstrap, runc)
#   scripts/install-system-deps.sh --check    only report; exit 1 when something is missing
#
# Idempotent and non-interactive (DEBIAN_FRONTEND=noninteractive, postfix preseeded to "No configuration",
# so /etc/postfix/main.cf is not created and the system's default Postfix instance stays unconfigured:
# the tests run their own private instance, see tests/support/postfix.py). No daemon is started.
#
# Not root and something missing: prints what to run and exits 0 — the tests that need the missing tools
# skip — except under CI=true (or with --strict), where it exits 1.
set -euo pipefail

PACKAGES=(
    # --- runtime -------------------------------------------------------------------------------------
    libmagic1        # python-magic: true-type detection
    bubblewrap       # bwrap: sandboxed converters
    ca-certificates  # TLS: pip, STARTTLS certificate checks
    librsvg2-bin     # rsvg-convert: SVG attachments rasterized inside the sandbox
    fonts-ipaexfont  # Japanese glyphs when PDFs (and SVGs) without embedded fonts are rasterized
    # Legacy .doc/.xls/.ppt and RTF attachments → PDF, by a headless LibreOffice resident in the sandbox
    # (the -nogui flavours: no X11/GTK); python3-uno lets the system Python drive it.
    libreoffice-core-nogui
    libreoffice-writer-nogui
    libreoffice-calc-nogui
    libreoffice-impress-nogui
    python3-uno
    # [antivirus]: clamd (also in the Dockerfile's runtime stage). Installing it starts no daemon here:
    # the tests run their own clamd on a private socket with a signature database made in the test.
    clamav-daemon
    # --- benchmarks ----------------------------------------------------------------------------------
    poppler-utils    # pdftoppm: the baseline bench/pdf_raster.py compares against
    # --- tests ---------------------------------------------------------------------------------------
    postfix          # a real LGWAN-side MTA (private instance started by the `postfix` pytest fixture)
    swaks            # manual/functional SMTP checks
    openssl          # makes the too-short (512-bit) DKIM key of the inbound tests (cryptography won't)
    # --- build ---------------------------------------------------------------------------------------
    make
)
PODMAN_PACKAGES=(podman debootstrap runc)

mode=install
strict=0
case "${CI:-}" in 1 | true | TRUE | True | yes) strict=1 ;; esac
for arg in "$@"; do
    case "$arg" in
        --podman) PACKAGES+=("${PODMAN_PACKAGES[@]}") ;;
        --check) mode=check ;;
        --strict) strict=1 ;;
        -h | --help)
            awk 'NR > 1 && /^#/ { print; next } NR > 1 { exit }' "$0"
            exit 0
            ;;
        *)
            echo "install-system-deps: unknown argument: $arg" >&2
            exit 2
            ;;
    esac
done

say() { echo "install-system-deps: $*"; }

if ! command -v dpkg-query >/dev/null 2>&1; then
    say "not a Debian system (no dpkg-query); install the equivalents of: ${PACKAGES[*]}"
    exit $((strict ? 1 : 0))
fi

installed() { [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = "installed" ]; }

# The interpreter `make setup` will use must be able to create a venv (Debian splits venv/ensurepip out).
python=$(command -v python3.11 || command -v python3 || true)
if [ -z "$python" ]; then
    PACKAGES+=(python3 python3-venv)
elif ! "$python" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    case "$(readlink -f "$python")" in
        /usr/bin/*) PACKAGES+=(python3-venv) ;;
        *) say "warning: $python cannot create venvs (no ensurepip) and is not Debian's python3" ;;
    esac
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
    installed "$pkg" || missing+=("$pkg")
done

if [ ${#missing[@]} -eq 0 ]; then
    [ "$mode" = check ] && say "all present: ${PACKAGES[*]}"
    exit 0
fi
if [ "$mode" = check ]; then
    say "missing: ${missing[*]}"
    exit 1
fi
if [ "$(id -u)" -ne 0 ]; then
    say "missing Debian packages: ${missing[*]}"
    say "run as root:  sudo $0 $*"
    if [ "$strict" -eq 1 ]; then
        exit 1
    fi
    say "continuing without them (tests that need them will be skipped)"
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive DEBCONF_NONINTERACTIVE_SEEN=true
apt_get() { apt-get -q -y -o DPkg::Lock::Timeout=600 -o Dpkg::Options::=--force-confdef \
    -o Dpkg::Options::=--force-confold "$@"; }

start=$(date +%s)
say "installing: ${missing[*]}"

if printf '%s\n' "${missing[@]}" | grep -qx postfix; then
    # "No configuration": no main.cf, nothing listening; the tests use their own instance.
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
fi

# Never start daemons from maintainer scripts (there may be no init system at all). Keep an existing policy.
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# temporary, from detox scripts/install-system-deps.sh\nexit 101\n' >"$policy"
    chmod 0755 "$policy"
    trap 'rm -f "$policy"' EXIT
fi

# Refresh the package lists when they are missing or older than a day; otherwise try the install first
# and only update when a package can't be found.
lists_fresh() {
    [ -n "$(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*' -mmin -1440 -print -quit 2>/dev/null)" ]
}
if ! lists_fresh; then
    apt_get update
    apt_get install --no-install-recommends "${missing[@]}"
elif ! apt_get install --no-install-recommends "${missing[@]}"; then
    apt_get update
    apt_get install --no-install-recommends "${missing[@]}"
fi

still=()
for pkg in "${missing[@]}"; do
    installed "$pkg" || still+=("$pkg")
done
if [ ${#still[@]} -gt 0 ]; then
    say "failed to install: ${still[*]}"
    exit 1
fi
say "done in $(($(date +%s) - start)) s"
