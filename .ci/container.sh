#!/usr/bin/env bash
# The container's build context, proved without a container engine: every COPY source of
# docker/Dockerfile must exist, and the build stage's own RUN line must succeed in a directory
# holding exactly what that stage copies (so a file the build needs but the Dockerfile does not
# copy fails here, as it would in `docker build`).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
dockerfile=docker/Dockerfile
context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT

# COPY lines without --from: sources relative to the context (the repository root).
stage=build
while read -r word rest; do
  case $word in
    FROM) [[ $rest == *" AS build" ]] && stage=build || stage=runtime ;;
    COPY)
      [[ $rest == --from=* ]] && continue
      read -ra args <<<"$rest"
      dest=${args[-1]}
      for src in "${args[@]:0:${#args[@]}-1}"; do
        [[ -e $src ]] || { echo "container: COPY $src: not in the build context" >&2; exit 1; }
        if [[ $stage == build ]]; then
          if [[ $dest == ./ ]]; then cp -a "$src" "$context/"; else mkdir -p "$context/$dest" && cp -a "$src/." "$context/$dest/"; fi
        fi
      done
      ;;
  esac
done < <(grep -E '^(FROM|COPY) ' "$dockerfile")

run=$(sed -n '/AS build/,/^FROM/{s/^RUN //p}' "$dockerfile")
[[ -n $run ]] || { echo "container: no RUN line in the build stage" >&2; exit 1; }
echo "== container build context: $(cd "$context" && ls | tr '\n' ' ')"
echo "== in it: $run"
# A target directory of its own: sharing the repository's would relink target/release/portvakt
# from the context (without .git, so its --version says "unknown") under the packages' feet.
(cd "$context" && CARGO_TARGET_DIR="$repo/target/container" bash -c "$run")
test -x "$repo/target/container/release/portvakt"
"$repo/target/container/release/portvakt" --version
echo "container build context: ok"
