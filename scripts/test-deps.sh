# Sourced by test.sh: Debian packages the tests use for real parts (a registry to push to,
# htpasswd for its auth, Chromium for the browser tests). Installed only where missing.
need=()
command -v docker-registry >/dev/null 2>&1 || [[ -x /usr/bin/docker-registry ]] || need+=(docker-registry)
command -v htpasswd >/dev/null 2>&1 || need+=(apache2-utils)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
[[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ]] || need+=(fonts-dejavu-core)
if ((${#need[@]})); then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "installing for the tests: ${need[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "missing for some tests (install them to run every test): ${need[*]}" >&2
  fi
fi
