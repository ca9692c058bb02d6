#!/usr/bin/env bash
# Installs what building and testing pyscheduler needs, on Debian or Ubuntu:
# system packages with apt-get, Python packages with pip into the given interpreter.
# Usage: tools/install-deps.sh [PYTHON]     (apt-get, then pip into PYTHON)
#        tools/install-deps.sh --system-only  (apt-get only)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${1:-python3}"

sudo=()
[[ $(id -u) == 0 ]] || sudo=(sudo)
packages=(cmake ninja-build g++ pkg-config libconcurrentqueue-dev libdlpack-dev libgtest-dev libbenchmark-dev
          libcpp-httplib-dev nlohmann-json3-dev)  # the last two: examples/server
# Debian's own python3 needs python3-venv to make virtual environments.
[[ "$(command -v python3 || true)" == /usr/bin/python3 ]] && packages+=(python3-venv python3-dev)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "install-deps: apt-get install ${missing[*]}"
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${missing[@]}"
fi

[[ "$python" == --system-only ]] && exit 0
echo "install-deps: pip install into $("$python" -c 'import sys; print(sys.prefix)')"
"$python" -m pip install --quiet --disable-pip-version-check -r "$here/python/requirements-dev.txt"
