#!/usr/bin/env bash
# Checks of the JupyterLab sidebar's TypeScript (labextension/): type check, ESLint and
# Prettier, then the Jest unit tests. Installs the npm packages first when node_modules is
# missing or older than package-lock.json. Builds nothing: mlcontainer_magics/labextension
# is left as it is.
set -euo pipefail
cd "$(dirname "$0")/../labextension"

if ! command -v npm >/dev/null 2>&1; then
  echo "check-frontend: npm (Node.js 20) is needed" >&2
  exit 1
fi

# npm rewrites node_modules/.package-lock.json on every install: it dates node_modules.
if [[ ! -f node_modules/.package-lock.json || package-lock.json -nt node_modules/.package-lock.json ]]; then
  npm ci --no-audit --no-fund
fi

npm run typecheck
npm run lint
npm test -- --ci
