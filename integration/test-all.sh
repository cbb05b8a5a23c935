#!/usr/bin/env bash
# The whole test suite: Rust unit and integration tests, then the Python
# interop suite (real pywinrm / pypsrp clients, pyspnego-backed targets).
# Installs what it needs itself (a venv under integration/.venv).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo test"
cargo test --all-targets

echo "== interop suite (integration/run.sh)"
bash integration/run.sh
