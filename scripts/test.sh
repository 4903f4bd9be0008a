#!/usr/bin/env bash
# The whole test suite: static checks (ruff, mypy, import layers, the sidebar's eslint, prettier
# and jest), then the engine and base image set up, then unit, integration and notebook tests.
# Extra arguments go to pytest.
source "$(dirname "$0")/env.sh"
cd "$ROOT"
echo "== static checks"
ruff check mlcontainer_magics tests bench conftest.py
ruff format --check mlcontainer_magics tests bench conftest.py
mypy
lint-imports --no-cache
bash scripts/check-frontend.sh
echo "== engine and base image"
mlcontainer doctor --fix
source "$ROOT/scripts/test-deps.sh"
echo "== tests"
python -m pytest tests notebooks --nbval-lax --nbval-sanitize-with notebooks/nbval-sanitize.cfg -p no:cacheprovider "$@"
