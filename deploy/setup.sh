#!/usr/bin/env bash
# `make setup`: install what relstream needs on a bare Debian/Ubuntu machine.
#   apt : redis-server; java 17 and maven only if missing (apt-get update only when needed)
#   pip : the package with its dependencies (skipped when everything is already satisfied)
#   mvn : the Kafka broker jars, cached and verified under ~/.cache/relstream/kafka/<version>
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"

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

# ---------------------------------------------------------------- pip
if "$PYTHON" deploy/check_deps.py; then
    say "pip: all requirements of relstream[dev] already satisfied"
else
    say "pip: installing relstream[dev]"
    "$PYTHON" -m pip install -q -e '.[dev]'
fi

# ---------------------------------------------------------------- mvn (Kafka jars)
"$PYTHON" -c '
import sys
sys.path.insert(0, ".")
from relstream.stack.kafka_jars import KAFKA_VERSION, ensure_kafka_jars
print(f"[setup] kafka: {KAFKA_VERSION} jars verified in {ensure_kafka_jars()}")
'
"$PYTHON" -c '
import sys
sys.path.insert(0, ".")
from relstream.prereqs import missing_for
missing = missing_for(["kafka", "redis", "triton"])
for m in missing:
    print(f"[setup] still missing: {m}")
sys.exit(1 if missing else 0)
'
say "done"
