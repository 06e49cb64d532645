# shellcheck shell=bash
# scripts/lib/debian-apt.sh: apt-get/apt-cache on a private configuration, to download Debian
# packages of any suite and architecture by name without touching the machine's own apt sources,
# lists or dpkg state. Sourced by scripts/setup (musl-dev:arm64 for the aarch64 cross build) and
# scripts/kernel-matrix-arm64 (arm64 kernels and busybox).
#
#   debian_apt_init DIR ARCH SUITE...   write DIR/sources.list for ARCH and SUITE(s), `update`
#                                        when the lists are missing or older than a day
#   debian_apt DIR apt-get|apt-cache ARGS...
#   debian_download DIR OUTDIR PKG...    apt-get download into OUTDIR (cached: skips a .deb there)
#   debian_resolve DIR META              the package a metapackage depends on (the kernel ABI
#                                        package: Debian renames it with every point release)
#
# Packages are verified by apt against the Debian archive keyring, as any apt download is.

DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
DEBIAN_KEYRING=${DEBIAN_KEYRING:-/usr/share/keyrings/debian-archive-keyring.gpg}

debian_apt() {
  local dir=$1 tool=$2
  shift 2
  local arch
  arch=$(cat "$dir/arch")
  "$tool" -q -o Dir::Etc::sourcelist="$dir/sources.list" -o Dir::Etc::sourceparts=- \
    -o Dir::State::Lists="$dir/lists" -o Dir::Cache="$dir/cache" \
    -o Dir::Cache::archives="$dir/archives" -o Debug::NoLocking=1 -o APT::Sandbox::User=root \
    -o APT::Architecture="$arch" -o APT::Architectures::="$arch" "$@"
}

debian_apt_init() {
  local dir=$1 arch=$2
  shift 2
  mkdir -p "$dir/lists/partial" "$dir/cache" "$dir/archives/partial"
  echo "$arch" >"$dir/arch"
  local want="" suite
  for suite in "$@"; do
    want+="deb [signed-by=$DEBIAN_KEYRING arch=$arch] $DEBIAN_MIRROR $suite main"$'\n'
  done
  local fresh=1
  if [ ! -f "$dir/sources.list" ] || [ "$(cat "$dir/sources.list")"$'\n' != "$want" ]; then
    printf '%s' "$want" >"$dir/sources.list"
    fresh=0
  fi
  # Refresh once a day: point releases replace package versions and remove old ones.
  if [ "$fresh" = 0 ] || [ ! -f "$dir/updated" ] || [ -n "$(find "$dir/updated" -mmin +1440)" ]; then
    debian_apt "$dir" apt-get update >/dev/null
    touch "$dir/updated"
  fi
}

debian_download() {
  local dir=$1 out=$2
  shift 2
  mkdir -p "$out"
  local pkg
  for pkg in "$@"; do
    local ver
    ver=$(debian_apt "$dir" apt-cache policy "$pkg" | sed -n 's/^ *Candidate: //p')
    if [ -z "$ver" ] || [ "$ver" = "(none)" ]; then
      echo "debian_download: no package $pkg in $(tr '\n' ' ' <"$dir/sources.list")" >&2
      return 1
    fi
    # apt names the file <name>_<version with : as %3a>_<arch>.deb
    local file="${pkg%%:*}_${ver//:/%3a}_$(cat "$dir/arch").deb"
    if [ ! -s "$out/$file" ]; then
      (cd "$out" && debian_apt "$dir" apt-get download "$pkg=$ver" >/dev/null) || return 1
    fi
    echo "$out/$file"
  done
}

debian_resolve() {
  local dir=$1 meta=$2
  debian_apt "$dir" apt-cache depends "$meta" | sed -n 's/^ *Depends: //p' | grep -v '^<' | head -1
}
