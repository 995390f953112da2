#!/usr/bin/env bash
# Every detox benchmark, in one go. `make bench` calls this with .venv/bin first on the PATH.
#
#   bash bench/run_all.sh                            # everything, full sizes (about 20-30 minutes here)
#   bash bench/run_all.sh --messages 500 --rounds 2  # arguments go to bench/throughput.py
#   BENCH_QUICK=1 bash bench/run_all.sh              # every script with small sizes (a few minutes)
#   BENCH_ONLY="latency memory" bash bench/run_all.sh   # a subset: libreoffice throughput latency attachments memory
#   LATENCY_ARGS="--rate 100" ATTACH_ARGS="--page-runs 5" MEMORY_ARGS="--messages 10" bash bench/run_all.sh
#
# Bounds: each script runs under timeout(1): throughput.py BENCH_TIMEOUT (3600 s), the others
# BENCH_SCRIPT_TIMEOUT (1800 s) each, libreoffice.py 900 s. Each script stops every process it started
# (by PID) on SIGTERM/Ctrl-C. A failing script does not stop the others; the exit status is 1 if any failed.
#
# Needs Postfix's smtp-source and smtp-sink (scripts/install-system-deps.sh installs postfix), and
# ../shared/peers/relay.py (or $DETOX_SHARED/peers/relay.py) for the relay baseline; without relay.py
# detox is measured alone. throughput.py adds a private Postfix → Maildir baseline when run as root.
# Results are printed, never asserted. See bench/README.md.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
python="$repo/.venv/bin/python"
[ -x "$python" ] || python="$(command -v python3)"

for tool in smtp-source smtp-sink; do
    if ! command -v "$tool" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$tool" ]; then
        echo "bench: $tool not found; install Postfix (make setup, or apt-get install postfix)" >&2
        exit 2
    fi
done
export PATH="$PATH:/usr/sbin"

only="${BENCH_ONLY:-libreoffice throughput latency attachments memory}"
script_timeout="${BENCH_SCRIPT_TIMEOUT:-1800}"
quick="${BENCH_QUICK:-}"
failed=()

wanted() { [[ " $only " == *" $1 "* ]]; }

# run NAME TIMEOUT SCRIPT ARGS...: timeout(1) --foreground so that a Ctrl-C in the terminal still reaches
# the script, which then stops what it started.
run() {
    local name="$1" limit="$2"
    shift 2
    echo
    echo "=============== bench: $name ($(date -u +%H:%M:%S) UTC, load average $(cut -d' ' -f1-3 /proc/loadavg))"
    timeout --foreground -k 60 "$limit" "$python" "$@"
    local rc=$?
    if [ "$rc" -ne 0 ]; then
        echo "bench: $name failed (exit $rc)" >&2
        failed+=("$name")
    fi
}

# LibreOffice per document, resident in the sandbox against a cold `soffice --convert-to` (skipped when
# LibreOffice is not installed).
if wanted libreoffice && command -v soffice >/dev/null 2>&1; then
    run libreoffice 900 "$here/libreoffice.py" ${quick:+--rounds 1 --no-corpus}
fi

if wanted throughput; then
    # shellcheck disable=SC2086
    run throughput "${BENCH_TIMEOUT:-3600}" "$here/throughput.py" \
        ${quick:+--messages 300 --rounds 2 --warmup 50} "$@"
fi
if wanted latency; then
    # shellcheck disable=SC2086
    run latency "$script_timeout" "$here/latency.py" \
        ${quick:+--messages 300 --rounds 1 --warmup 50 --peak-messages 300} ${LATENCY_ARGS:-}
fi
if wanted attachments; then
    # shellcheck disable=SC2086
    run attachments "$script_timeout" "$here/attachments.py" \
        ${quick:+--messages 30 --rounds 1 --page-runs 3 --warmup 6} ${ATTACH_ARGS:-}
fi
if wanted memory; then
    # shellcheck disable=SC2086
    run memory "$script_timeout" "$here/memory.py" \
        ${quick:+--messages 5 --size 5000000} ${MEMORY_ARGS:-}
fi

if [ "${#failed[@]}" -ne 0 ]; then
    echo "bench: failed: ${failed[*]}" >&2
    exit 1
fi
