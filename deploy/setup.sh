#!/usr/bin/env bash
# `make setup`: install what relstream needs on a bare Debian/Ubuntu machine.
#   apt : redis-server; java 17 and maven only if missing (apt-get update only when needed)
#   venv: $VENV (default .venv) made with $PYTHON; uv installs relstream[$EXTRAS] into it
#         (editable). Nothing goes into the system interpreter. uv's download cache
#         (~/.cache/uv, or $UV_CACHE_DIR) makes a second virtualenv take seconds.
#   mvn : the Kafka broker jars, cached and verified under ~/.cache/relstream/kafka/<version>
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
EXTRAS="${EXTRAS:-all}"
UV_VERSION="0.13.*"  # the installer itself

say() { printf '[setup] %s\n' "$*"; }

# ---------------------------------------------------------------- apt
need_pkgs=()
command -v redis-server >/dev/null 2>&1 || need_pkgs+=(redis-server)
command -v java >/dev/null 2>&1 || need_pkgs+=(default-jre-headless)
command -v mvn >/dev/null 2>&1 || need_pkgs+=(maven)
if ((${#need_pkgs[@]})); then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
            say "missing ${need_pkgs[*]} and not root (no sudo): install them with apt-get install -y ${need_pkgs[*]}"
            exit 1
        fi
    fi
    say "apt: installing ${need_pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # refresh the package lists only when the install cannot find the packages
    if ! $SUDO apt-get install -y --no-install-recommends "${need_pkgs[@]}"; then
        $SUDO apt-get update
        $SUDO apt-get install -y --no-install-recommends "${need_pkgs[@]}"
    fi
else
    say "apt: redis-server, java, mvn present"
fi

# ---------------------------------------------------------------- virtualenv
VPY="$VENV/bin/python"
if [ ! -x "$VPY" ]; then
    say "venv: creating $VENV with $("$PYTHON" -c 'import sys; print(sys.executable, sys.version.split()[0])')"
    if ! "$PYTHON" -m venv "$VENV"; then
        say "could not create a virtualenv with $PYTHON: install python3-venv (apt-get install -y python3-venv)"
        exit 1
    fi
fi
if [ ! -x "$VENV/bin/uv" ]; then
    say "venv: installing the installer (uv $UV_VERSION) into $VENV"
    PIP_ROOT_USER_ACTION=ignore "$VPY" -m pip install --disable-pip-version-check "uv==$UV_VERSION"
fi
if [ -z "$(ls -A "${UV_CACHE_DIR:-$HOME/.cache/uv}" 2>/dev/null)" ]; then
    say "first install: about 4 GB to download (torch with its CUDA libraries is most of it,"
    say "the Triton server wheel ~55 MB); later virtualenvs reuse uv's cache and take seconds"
fi
say "venv: relstream[$EXTRAS] into $VENV"
"$VENV/bin/uv" pip install --python "$VPY" -e ".[$EXTRAS]"

# ---------------------------------------------------------------- mvn (Kafka jars)
"$VPY" -c '
import sys
sys.path.insert(0, ".")
from relstream.stack.kafka_jars import KAFKA_VERSION, ensure_kafka_jars
print(f"[setup] kafka: {KAFKA_VERSION} jars verified in {ensure_kafka_jars()}")
'
"$VPY" -c '
import sys
sys.path.insert(0, ".")
from relstream.stack.prereqs import missing_for
missing = missing_for(["kafka", "redis", "triton"])
for m in missing:
    print(f"[setup] still missing: {m}")
sys.exit(1 if missing else 0)
'
say "done: $VENV is ready (activate it with: . $VENV/bin/activate)"
