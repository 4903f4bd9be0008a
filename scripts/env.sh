# Sourced by the scripts: a project venv with the package and its test tools installed.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${MLCONTAINER_VENV:-$ROOT/.venv}
PY=${PYTHON:-python3}
if [[ ! -x $VENV/bin/python ]]; then
  "$PY" -m venv "$VENV"
fi
# Reinstall only when the project's metadata changed since the last install.
stamp=$VENV/.mlcontainer-installed
if [[ ! -f $stamp || $ROOT/pyproject.toml -nt $stamp ]]; then
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -e "$ROOT[test]"
  touch "$stamp"
fi
export PATH=$VENV/bin:$PATH
