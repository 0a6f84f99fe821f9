#!/usr/bin/env bash
# Set up .venv if needed, then run the test suite: all of it (a few minutes on 2 CPU cores), or with --fast
# the tests not marked slow (under a minute), for the edit loop. Other arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
args=()
for arg in "$@"; do
  if [ "$arg" = --fast ]; then
    args+=(-m "not slow")
  else
    args+=("$arg")
  fi
done
.venv/bin/python -m pytest -q "${args[@]}"
