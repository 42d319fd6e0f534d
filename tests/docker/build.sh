#!/usr/bin/env bash
# Build the static mesh-node and mesh-ctl binaries and the FROM-scratch image (./Dockerfile).
#
#   tests/docker/build.sh [IMAGE]        (default IMAGE: dark-store-mesh:dev)
#
# Prints the image name on stdout when it is built. Needs only cargo and a Docker engine (either
# builder, BuildKit or the legacy one): the image has no base to pull. The build context is a small
# staging directory (target/docker-context), never the repository with its target/. Concurrent runs
# (tests in parallel processes) take turns on a lock; a warm run is a no-op cargo build and a
# cached image build.
set -euo pipefail
cd "$(dirname "$0")/../.."
image="${1:-dark-store-mesh:dev}"
triple=x86_64-unknown-linux-gnu
target="${CARGO_TARGET_DIR:-target}"

# Say what is missing before minutes of compiling, not after.
if ! command -v docker >/dev/null 2>&1; then
  echo "build.sh: the docker CLI is not installed (the image build needs a Docker engine)" >&2
  exit 1
fi
if ! docker version --format '{{.Server.Version}}' >/dev/null 2>&1; then
  echo "build.sh: the Docker daemon is not reachable (docker version fails; is it running, and may this user use it?)" >&2
  exit 1
fi

for tool in objcopy readelf flock; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "build.sh: $tool is missing (apt-get install binutils util-linux)" >&2
    exit 1
  fi
done

mkdir -p "$target"
exec 9>"$target/docker-build.lock"
flock 9

# Static glibc binaries: nothing in the image but what we copy into it.
RUSTFLAGS="-C target-feature=+crt-static" \
  "${CARGO:-cargo}" build --release --locked --target "$triple" -p mesh-node -p mesh-ctl

ctx="$target/docker-context"
rm -rf "$ctx"
mkdir -p "$ctx/data"
for bin in mesh-node mesh-ctl; do
  # Without the release profile's line tables (a quarter of the size); the symbols stay, so a
  # backtrace still names functions, and target/ keeps the full binaries for symbolizing.
  objcopy --strip-debug "$target/$triple/release/$bin" "$ctx/$bin"
done
# A user and group database so tools inside the container name uid 65532 (no shell, no home).
printf 'root:x:0:0:root:/:/sbin/nologin\nmesh:x:65532:65532:mesh:/var/lib/dsm:/sbin/nologin\n' >"$ctx/passwd"
printf 'root:x:0:\nmesh:x:65532:\n' >"$ctx/group"

# Refuse to ship a dynamically linked binary: in a scratch image it would not even start.
for bin in mesh-node mesh-ctl; do
  if readelf -l "$ctx/$bin" | grep -q 'Requesting program interpreter'; then
    echo "build.sh: $bin is dynamically linked; the static build did not take" >&2
    exit 1
  fi
done

version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)"
revision="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
# --quiet keeps stdout to the image id; build errors still go to stderr.
docker build --quiet -f Dockerfile \
  --build-arg "VERSION=${version:-dev}" --build-arg "REVISION=$revision" \
  -t "$image" "$ctx" >/dev/null
# Earlier builds this one replaced (untagged, and used by no container) would pile up otherwise.
docker image prune --force --filter "label=org.opencontainers.image.title=dark-store-mesh" >/dev/null || true
echo "$image"
