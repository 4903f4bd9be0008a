#!/usr/bin/env bash
# The whole test suite: engine and base image set up first, then unit, integration and
# notebook tests. Extra arguments go to pytest.
source "$(dirname "$0")/env.sh"
cd "$ROOT"
mlcontainer doctor --fix
source "$ROOT/scripts/test-deps.sh"
python -m pytest tests notebooks --nbval-lax --nbval-sanitize-with notebooks/nbval-sanitize.cfg -p no:cacheprovider "$@"
