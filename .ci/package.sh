#!/usr/bin/env bash
# The packages, built and tried as an operator would use them.
#   bash .ci/package.sh build   target/package/ assets, then target/debian/*.deb and
#                               target/generate-rpm/*.rpm
#   bash .ci/package.sh check   installs the .deb with dpkg -i, follows the README's production
#                               steps for the token, runs the installed binary as the package's
#                               user with the installed config (check, then serve on loopback and
#                               answer a blocked query), then purges it and checks nothing is left
# Without an argument: both. Installs cargo-deb, cargo-generate-rpm, dig and rpm when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

build() {
  command -v cargo-deb >/dev/null || cargo install cargo-deb --locked --quiet
  command -v cargo-generate-rpm >/dev/null || cargo install cargo-generate-rpm --locked --quiet
  cargo build --release --locked --quiet
  local out=target/package bin=target/release/portvakt
  rm -rf "$out" && mkdir -p "$out"
  # The example config with the package's absolute paths and state directory.
  sed -e 's#"blocklists/#"/etc/portvakt/lists/#g' \
      -e 's|^# state_dir = "/var/lib/portvakt"|state_dir = "/var/lib/portvakt"|' \
      -e 's|^# Relative list paths are taken from the working directory.*|# Installed by the portvakt package: lists in /etc/portvakt/lists, state in /var/lib/portvakt.|' \
      config/portvakt.toml >"$out/portvakt.toml"
  grep -q '^state_dir = "/var/lib/portvakt"' "$out/portvakt.toml"
  ! grep -q '"blocklists/' "$out/portvakt.toml"
  "$bin" manpage | gzip -9n >"$out/portvakt.1.gz"
  "$bin" completions bash >"$out/portvakt.bash"
  "$bin" completions zsh >"$out/_portvakt"
  "$bin" completions fish >"$out/portvakt.fish"
  cargo deb --no-build --quiet
  cargo generate-rpm
  ls -l target/debian/*.deb target/generate-rpm/*.rpm
}

check() {
  local missing=()
  command -v dig >/dev/null || missing+=(bind9-dnsutils)
  command -v rpm >/dev/null || missing+=(rpm)
  if ((${#missing[@]})); then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  local deb rpmfile
  deb=$(ls -t target/debian/portvakt_*.deb | head -1)
  rpmfile=$(ls -t target/generate-rpm/portvakt-*.rpm | head -1)
  echo "== rpm contents ($rpmfile)"
  rpm -qlp "$rpmfile" | grep -E '^/(usr/bin/portvakt|etc/portvakt/portvakt.toml|usr/lib/systemd/system/portvakt.service)$'
  rpm -qp --scripts "$rpmfile" | grep -q 'useradd -r -g portvakt'

  echo "== dpkg -i $deb"
  dpkg -i "$deb"
  trap 'pkill -u portvakt portvakt 2>/dev/null || true; dpkg --purge portvakt >/dev/null 2>&1 || true' EXIT
  getent passwd portvakt >/dev/null
  test "$(stat -c '%U:%G %a' /etc/portvakt/portvakt.toml)" = "root:portvakt 640"
  test "$(stat -c '%U:%G %a' /var/lib/portvakt)" = "portvakt:portvakt 750"
  man -w portvakt >/dev/null 2>&1 || test -f /usr/share/man/man1/portvakt.1.gz
  /usr/bin/portvakt --version

  echo "== the README's steps: an admin token readable by the service"
  # (these lines are the README's "Production install", step 3)
  head -c 32 /dev/urandom | base64 | install -m 0640 -o root -g portvakt /dev/stdin /etc/portvakt/admin.token
  sed -i 's|^# token_file = "/etc/portvakt/admin.token"|token_file = "/etc/portvakt/admin.token"|' /etc/portvakt/portvakt.toml

  echo "== portvakt check, as the package's user"
  runuser -u portvakt -- /usr/bin/portvakt check --config /etc/portvakt/portvakt.toml | head -3

  echo "== portvakt serve, as the package's user, on the installed config's loopback port"
  runuser -u portvakt -- /usr/bin/portvakt serve --config /etc/portvakt/portvakt.toml >/tmp/portvakt-package.log 2>&1 &
  local pid=$!
  for _ in $(seq 50); do
    curl -fs http://127.0.0.1:9153/readyz >/dev/null 2>&1 && break
    sleep 0.1
  done
  local answer
  answer=$(dig +tries=1 +time=2 @127.0.0.1 -p 5353 tiktok.com)
  echo "$answer" | grep -E 'status:|EDE'
  echo "$answer" | grep -q 'status: NXDOMAIN' || { cat /tmp/portvakt-package.log; exit 1; }
  echo "$answer" | grep -q 'EDE: 15' || { cat /tmp/portvakt-package.log; exit 1; }
  # The token the service read guards the API: without it a reload is refused.
  test "$(curl -s -o /dev/null -w '%{http_code}' -X POST http://127.0.0.1:9153/api/v1/reload)" = 401
  test "$(curl -s -o /dev/null -w '%{http_code}' -X POST \
    -H "Authorization: Bearer $(cat /etc/portvakt/admin.token)" http://127.0.0.1:9153/api/v1/reload)" = 200
  test -s /var/lib/portvakt/audit.jsonl
  kill "$pid"
  wait "$pid" || true

  echo "== dpkg --purge portvakt"
  rm -f /etc/portvakt/admin.token
  dpkg --purge portvakt
  trap - EXIT
  for gone in /usr/bin/portvakt /etc/portvakt /var/lib/portvakt /lib/systemd/system/portvakt.service; do
    if [[ -e $gone ]]; then echo "package: $gone is left after purge" >&2; exit 1; fi
  done
  if getent passwd portvakt >/dev/null; then echo "package: user portvakt is left after purge" >&2; exit 1; fi
  echo "package: ok"
}

case ${1:-all} in
  build) build ;;
  check) check ;;
  all) build && check ;;
  *) echo "usage: $0 [build|check]" >&2; exit 2 ;;
esac
