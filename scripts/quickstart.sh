#!/usr/bin/env bash
# The main job, end to end: a Docker engine and base image (started, installed or built where
# missing), then the quickstart notebook executed for real, its outputs written back.
source "$(dirname "$0")/env.sh"
cd "$ROOT"
mlcontainer doctor --fix
jupyter nbconvert --to notebook --execute --inplace \
  --ExecutePreprocessor.timeout=900 notebooks/01-quickstart.ipynb
echo "Quickstart ran: open notebooks/01-quickstart.ipynb to see its outputs."
