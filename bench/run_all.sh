#!/usr/bin/env bash
# Every detox benchmark, in one go. `make bench` calls this with .venv/bin first on the PATH.
#
#   bash bench/run_all.sh                          # throughput: 2000 msgs x 3 interleaved rounds (a few minutes)
#   bash bench/run_all.sh --messages 500 --rounds 2   # arguments go to bench/throughput.py
#   BENCH_TIMEOUT=1800 bash bench/run_all.sh       # hard bound on the whole run (default 3600 s)
#
# Needs Postfix's smtp-source and smtp-sink (scripts/install-system-deps.sh installs postfix) and
# ../shared/peers/relay.py (or $DETOX_SHARED/peers/relay.py) for the baseline; without relay.py detox is
# measured alone. Results are printed, never asserted. See bench/README.md.
set -euo pipefail
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

# LibreOffice per document, resident in the sandbox against a cold `soffice --convert-to` (a few minutes;
# skipped when LibreOffice is not installed). Its failure does not stop the throughput run.
if command -v soffice >/dev/null 2>&1; then
    timeout --foreground -k 30 900 "$python" "$here/libreoffice.py" \
        || echo "bench: libreoffice.py failed (exit $?)" >&2
fi

# throughput.py stops every process it started on SIGTERM/Ctrl-C; timeout(1) bounds the whole run
# (--foreground: a Ctrl-C in the terminal still reaches throughput.py).
exec timeout --foreground -k 60 "${BENCH_TIMEOUT:-3600}" "$python" "$here/throughput.py" "$@"
