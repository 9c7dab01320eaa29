#!/usr/bin/env bash
# Install size and time of each way in, each into a fresh venv under a temporary folder (pip's cache left as is):
#   bash scripts/install_size.sh            # the package (pip install .), with the app extra, and requirements.txt
#   PIP_ARGS="--find-links /opt/wheels" bash scripts/install_size.sh   # e.g. to offer torch's CPU wheel to pip
# Prints one table row per install: what, seconds, size of the venv, torch build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "| install | seconds | venv size | torch |"
echo "|---|---|---|---|"
for what in "." ".[app]" "-r requirements.txt"; do
    venv="$tmp/venv"
    rm -rf "$venv"
    "$PYTHON" -m venv "$venv"
    start=$(date +%s.%N)
    # shellcheck disable=SC2086  # $what and PIP_ARGS are word lists on purpose
    "$venv/bin/python" -m pip install -q --disable-pip-version-check ${PIP_ARGS:-} $what >"$tmp/pip.log" 2>&1 \
        || { tail -20 "$tmp/pip.log"; exit 1; }
    end=$(date +%s.%N)
    torch=$("$venv/bin/python" -c "import torch; print(torch.__version__)")
    printf '| `pip install %s` | %.0f | %s | %s |\n' "$what" "$(echo "$end - $start" | bc)" "$(du -sh "$venv" | cut -f1)" "$torch"
done
rm -rf build ./*.egg-info
