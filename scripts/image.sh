#!/usr/bin/env bash
# Builds the rulegate container image with podman (deploy/Containerfile, FROM scratch):
# stages the release binary, exactly the shared libraries `ldd` lists for it and for ONNX
# Runtime (plus the dynamic loader), ONNX Runtime, the shipped model, the policies and the
# image's config into target/image/ctx, then runs
#   podman build -f deploy/Containerfile target/image/ctx -t $IMAGE
# Installs podman and runc with apt when missing. See deploy/README.md.
# Usage: scripts/image.sh
#   IMAGE=localhost/rulegate:dev   the tag
#   NO_BUILD=1                     use target/release/rulegate as it is (no cargo build)
#   STRIP=debug|all|none           what to strip from the binary's copy (default debug: drops
#                                  the line tables, keeps symbol names for panic backtraces)
#   RULEGATE_SOURCE_URL=...        the org.opencontainers.image.source label (default: git remote)
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${IMAGE:-localhost/rulegate:dev}
STRIP=${STRIP:-debug}
ORT_VERSION=1.31.1
BIN=target/release/rulegate
MODEL=models/rulegate-minilm-rbr
CTX=target/image/ctx
say() { printf '[image] %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

. deploy/container/podman.sh
podman_install || die "cannot install podman: $PODMAN_PROBLEM"

if [ -z "${NO_BUILD:-}" ]; then
  say "cargo build --release --locked"
  ${CARGO:-cargo} build --release --locked
fi
[ -x "$BIN" ] || die "$BIN is missing: run \`make build\` (or drop NO_BUILD)"
ORT_LIB=${ORT_LIB:-$(ls .venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so."$ORT_VERSION" 2>/dev/null | head -n1 || true)}
[ -f "$ORT_LIB" ] || die "ONNX Runtime $ORT_VERSION is missing from .venv: run \`make setup\` (or set ORT_LIB)"
for f in model.onnx tokenizer.json manifest.json; do
  [ -f "$MODEL/$f" ] || die "$MODEL/$f is missing"
done

say "staging $CTX"
rm -rf "$CTX"
mkdir -p "$CTX"/{rootfs/etc/ssl/certs,rootfs/tmp,home/nonroot,ort,model,etc/policies,etc/admin}

# The loader and every library ldd resolves, at the paths ldd prints (the loader at the
# binary's PT_INTERP path); the image has no ld.so.cache, so the loader searches its default
# directories (/lib/x86_64-linux-gnu among them). Copies are the files, not the links.
libs() { # file -> the paths of the libraries it loads, the loader included
  local out
  out=$(ldd "$1") || die "ldd $1 failed"
  if grep -q 'not found' <<<"$out"; then die "ldd $1: $(grep 'not found' <<<"$out")"; fi
  awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' <<<"$out"
}
mapfile -t needed < <( (libs "$BIN"; libs "$ORT_LIB") | sort -u)
pkgs=()
for lib in "${needed[@]}"; do
  mkdir -p "$CTX/rootfs$(dirname "$lib")"
  cp -L "$lib" "$CTX/rootfs$lib"
  chmod 0755 "$CTX/rootfs$lib"
  # The Debian package it came from, for its copyright file (dpkg records /lib paths).
  pkg=$(dpkg -S "$lib" 2>/dev/null || dpkg -S "$(readlink -f "$lib")" 2>/dev/null || true)
  if [ -n "$pkg" ]; then pkgs+=("${pkg%%:*}"); fi
done
say "libraries: ${needed[*]}"

# Users: root and nonroot (65532, as in distroless images); no shell exists to log in with.
cat >"$CTX/rootfs/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
EOF
cat >"$CTX/rootfs/etc/group" <<'EOF'
root:x:0:
nonroot:x:65532:
EOF
# glibc resolves names from /etc/hosts (podman and Kubernetes mount one), then DNS.
printf 'hosts: files dns\n' >"$CTX/rootfs/etc/nsswitch.conf"
# CA certificates for https upstreams and OTLP endpoints.
cp -L /etc/ssl/certs/ca-certificates.crt "$CTX/rootfs/etc/ssl/certs/ca-certificates.crt" \
  || die "/etc/ssl/certs/ca-certificates.crt is missing (apt-get install ca-certificates)"
pkgs+=(ca-certificates)
chmod 1777 "$CTX/rootfs/tmp"
# Copyright files of what the image redistributes.
for pkg in $(printf '%s\n' "${pkgs[@]}" | sort -u); do
  if [ -f "/usr/share/doc/$pkg/copyright" ]; then
    mkdir -p "$CTX/rootfs/usr/share/doc/$pkg"
    cp "/usr/share/doc/$pkg/copyright" "$CTX/rootfs/usr/share/doc/$pkg/"
  fi
done

# ONNX Runtime, with its license and third-party notices.
cp -L "$ORT_LIB" "$CTX/ort/libonnxruntime.so.$ORT_VERSION"
ort_pkg=$(dirname "$(dirname "$ORT_LIB")")
for f in LICENSE ThirdPartyNotices.txt; do
  if [ -f "$ort_pkg/$f" ]; then cp "$ort_pkg/$f" "$CTX/ort/onnxruntime-$f"; fi
done

# The model (the files the classifier reads, and its card).
cp "$MODEL"/{model.onnx,tokenizer.json,manifest.json} "$CTX/model/"
if [ -f "$MODEL/MODEL_CARD.md" ]; then cp "$MODEL/MODEL_CARD.md" "$CTX/model/"; fi

# /etc/rulegate: the config, the policies, an empty admin token (admin API locked until a
# real one is mounted over it).
cp deploy/container/rulegate.yaml "$CTX/etc/rulegate.yaml"
cp policies/*.yaml "$CTX/etc/policies/"
: >"$CTX/etc/admin/token"

# The binary.
cp "$BIN" "$CTX/rulegate"
case "$STRIP" in
  debug) strip --strip-debug "$CTX/rulegate" ;;
  all) strip "$CTX/rulegate" ;;
  none) ;;
  *) die "STRIP must be debug, all or none" ;;
esac

# Everything readable by the non-root user; nothing writable by it but /tmp and its home.
chmod -R u+rwX,go+rX,go-w "$CTX"
chmod 1777 "$CTX/rootfs/tmp"

VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
if REVISION=$(git rev-parse HEAD 2>/dev/null); then
  git diff --quiet HEAD -- || REVISION="$REVISION-dirty"
else
  REVISION=unknown
fi
SOURCE=${RULEGATE_SOURCE_URL:-$(git remote get-url origin 2>/dev/null || echo unknown)}
say "staged $(du -sh "$CTX" | cut -f1); podman build -t $IMAGE (${PODMAN_FLAGS[*]})"
previous=$(pm image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)
CREATED=$(date -u +%Y-%m-%dT%H:%M:%SZ)
# The labels also as --label: podman 4.3 (buildah 1.28) reuses a cached LABEL step even when
# a build argument's value changed; --label is applied to the committed image every time.
labels=()
for kv in version="$VERSION" revision="$REVISION" created="$CREATED" source="$SOURCE"; do
  labels+=(--label "org.opencontainers.image.$kv")
done
pm build -f deploy/Containerfile \
  --build-arg VERSION="$VERSION" --build-arg REVISION="$REVISION" \
  --build-arg CREATED="$CREATED" --build-arg SOURCE="$SOURCE" "${labels[@]}" \
  -t "$IMAGE" "$CTX"
# The image this tag named before: removed when nothing else uses it (vfs keeps a full copy
# of every layer, so old builds add up).
if [ -n "$previous" ] && [ "$previous" != "$(pm image inspect --format '{{.Id}}' "$IMAGE")" ]; then
  pm rmi "$previous" >/dev/null 2>&1 || true
fi
size=$(pm image inspect --format '{{.Size}}' "$IMAGE")
say "built $IMAGE: $size bytes ($((size / 1024 / 1024)) MiB)"
