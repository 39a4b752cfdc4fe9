#!/usr/bin/env bash
# The packages, built and tried as an operator would use them.
#   bash .ci/package.sh build   target/package/ assets, then target/debian/*.deb and
#                               target/generate-rpm/*.rpm
#   bash .ci/package.sh check   follows the README's "Production install" word for word (its
#                               marked blocks: build and dpkg -i, check, token, certificate),
#                               runs the installed unit's ExecStart as its user with the installed
#                               config (a blocked query over UDP and over DoT with the installed
#                               key, the token guarding the API), then purges the package and
#                               checks nothing is left. The default.
# Installs cargo-deb, cargo-generate-rpm, dig, kdig, openssl, curl and rpm when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

build() {
  command -v cargo-deb >/dev/null || cargo install cargo-deb --locked --quiet
  command -v cargo-generate-rpm >/dev/null || cargo install cargo-generate-rpm --locked --quiet
  # The commit goes into the binary (build.rs); set here, a change of it rebuilds and relinks.
  PORTVAKT_COMMIT=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
  if [[ -n $(git status --porcelain --untracked-files=no 2>/dev/null) ]]; then
    PORTVAKT_COMMIT+=-dirty
  fi
  export PORTVAKT_COMMIT
  cargo build --release --locked --quiet
  local out=target/package bin=target/release/portvakt
  "$bin" --version | grep -qF "($PORTVAKT_COMMIT)"
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
  command -v kdig >/dev/null || missing+=(knot-dnsutils)
  command -v openssl >/dev/null || missing+=(openssl)
  command -v curl >/dev/null || missing+=(curl)
  if ((${#missing[@]})); then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  local rpmfile
  bash .ci/package.sh build >/dev/null
  rpmfile=$(ls -t target/generate-rpm/portvakt-*.rpm | head -1)
  echo "== rpm contents ($rpmfile)"
  rpm -qlp "$rpmfile" | grep -E '^/(usr/bin/portvakt|etc/portvakt/portvakt.toml|usr/lib/systemd/system/portvakt.service)$'
  rpm -qp --scripts "$rpmfile" | grep -q 'useradd -r -g portvakt'

  echo "== README step 1: build and install the package"
  readme build
  trap 'pkill -u portvakt portvakt 2>/dev/null || true; dpkg --purge portvakt >/dev/null 2>&1 || true' EXIT
  getent passwd portvakt >/dev/null
  test "$(stat -c '%U:%G %a' /etc/portvakt/portvakt.toml)" = "root:portvakt 640"
  test "$(stat -c '%U:%G %a' /var/lib/portvakt)" = "portvakt:portvakt 750"
  test -f /usr/share/man/man1/portvakt.1.gz
  test -f /usr/share/bash-completion/completions/portvakt
  /usr/bin/portvakt --version
  if command -v systemd-analyze >/dev/null; then
    systemd-analyze verify /lib/systemd/system/portvakt.service
  fi

  echo "== README step 2: check the config as the service reads it"
  readme check | head -3

  echo "== README step 3: the admin token"
  readme token
  test "$(stat -c '%U:%G %a' /etc/portvakt/admin.token)" = "root:portvakt 640"

  echo "== README step 4: a certificate (made here by openssl) and its key"
  local certs
  certs=$(mktemp -d)
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
    -subj /CN=dns.portvakt.test -addext subjectAltName=DNS:dns.portvakt.test \
    -keyout "$certs/key.pem" -out "$certs/fullchain.pem" 2>/dev/null
  (cd "$certs" && readme certificate)
  sed -i -e 's|^# tls_listen = .*|tls_listen = ["127.0.0.1:8853"]|' \
    -e 's|^# tls_cert_file = .*|tls_cert_file = "/etc/portvakt/tls/fullchain.pem"|' \
    -e 's|^# tls_key_file = .*|tls_key_file = "/etc/portvakt/tls/key.pem"|' /etc/portvakt/portvakt.toml
  grep -q '^tls_key_file = "/etc/portvakt/tls/key.pem"' /etc/portvakt/portvakt.toml

  echo "== README step 5: the unit's ExecStart, as the unit's user (no systemd here)"
  local exec_start
  exec_start=$(sed -n 's/^ExecStart=//p' /lib/systemd/system/portvakt.service)
  grep -qx 'User=portvakt' /lib/systemd/system/portvakt.service
  # shellcheck disable=SC2086 # the unit's command line, split as systemd splits it
  runuser -u portvakt -- $exec_start >/tmp/portvakt-package.log 2>&1 &
  local pid=$!
  for _ in $(seq 50); do
    curl -fs http://127.0.0.1:9153/readyz >/dev/null 2>&1 && break
    sleep 0.1
  done
  local answer
  answer=$(dig +tries=1 +time=2 @127.0.0.1 -p 5353 tiktok.com) || { cat /tmp/portvakt-package.log; exit 1; }
  echo "$answer" | grep -E 'status:|EDE'
  echo "$answer" | grep -q 'status: NXDOMAIN' || { cat /tmp/portvakt-package.log; exit 1; }
  echo "$answer" | grep -q 'EDE: 15' || { cat /tmp/portvakt-package.log; exit 1; }
  # Over TLS too: the service read the key the README installed.
  kdig +tls +tls-ca="$certs/fullchain.pem" +tls-hostname=dns.portvakt.test +time=2 +retry=0 \
    @127.0.0.1 -p 8853 t.me | grep -q 'status: NXDOMAIN' || { cat /tmp/portvakt-package.log; exit 1; }
  echo "DoT with the installed key: NXDOMAIN for t.me"
  # The token the service read guards the API: without it a reload is refused.
  test "$(curl -s -o /dev/null -w '%{http_code}' -X POST http://127.0.0.1:9153/api/v1/reload)" = 401
  test "$(curl -s -o /dev/null -w '%{http_code}' -X POST \
    -H "Authorization: Bearer $(cat /etc/portvakt/admin.token)" http://127.0.0.1:9153/api/v1/reload)" = 200
  test -s /var/lib/portvakt/audit.jsonl
  kill "$pid"
  wait "$pid" || true

  echo "== dpkg --purge portvakt"
  rm -rf /etc/portvakt/admin.token /etc/portvakt/tls "$certs"
  dpkg --purge portvakt
  trap - EXIT
  for gone in /usr/bin/portvakt /etc/portvakt /var/lib/portvakt /lib/systemd/system/portvakt.service; do
    if [[ -e $gone ]]; then echo "package: $gone is left after purge" >&2; exit 1; fi
  done
  if getent passwd portvakt >/dev/null; then echo "package: user portvakt is left after purge" >&2; exit 1; fi
  echo "package: ok"
}

# The README's production steps, run as written: the ```sh block after `<!-- ci: NAME -->`.
readme() {
  local block
  block=$(awk -v tag="<!-- ci: $1 -->" '
    $0 == tag { found = 1; next }
    found && /^```sh$/ { inside = 1; next }
    inside && /^```$/ { exit }
    inside { print }' "$repo/README.md")
  [[ -n $block ]] || { echo "package: README has no block \"$1\"" >&2; exit 1; }
  echo "$block" | sed 's/^/  $ /'
  bash -euo pipefail -c "$SUDO_SHIM
$block"
}

# CI runs as root without sudo: `sudo -u USER CMD` becomes runuser, plain `sudo CMD` just CMD.
SUDO_SHIM='command -v sudo >/dev/null || sudo() {
  if [[ $1 == -u ]]; then local user=$2; shift 2; runuser -u "$user" -- "$@"; else "$@"; fi
}'

case ${1:-check} in
  build) build ;;
  check) check ;;
  *) echo "usage: $0 [build|check]" >&2; exit 2 ;;
esac
