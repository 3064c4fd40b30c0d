#!/usr/bin/env bash
# Local stand-ins for the Dockerfile's three base images, for machines where no image registry answers
# (tests/docker/e2e.sh calls this only when `docker pull` of the real ones fails). Each is tagged under
# kavier-standin/ and handed to the build through the Dockerfile's PYTHON_IMAGE / JDK_IMAGE / MAVEN_IMAGE
# arguments, so the real names are never shadowed:
#   kavier-standin/python:3.11   Debian bookworm (debootstrap minbase) with python3, venv, pip and the
#                                host's extra CA certificates (pip inside the build must trust the same CAs)
#   kavier-standin/jdk           the host's JDK >= 21 at /opt/java/openjdk (where eclipse-temurin has it)
#   kavier-standin/maven:3.9     Maven's binary distribution from Maven Central (checksum checked) at
#                                /usr/share/maven (where the maven image has it)
# The root file systems are cached as tarballs in $KAVIER_DOCKER_CACHE (default ~/.cache/kavier-docker):
# they are what `docker pull` would have cached; delete the folder to make them again.
set -euo pipefail
: "${DOCKER:=docker}"
cache="${KAVIER_DOCKER_CACHE:-$HOME/.cache/kavier-docker}"
mkdir -p "$cache"
MAVEN_VERSION=3.9.9
work="$(mktemp -d /var/tmp/kavier-standin.XXXXXX)"
trap 'rm -rf "$work"' EXIT

need() { command -v "$1" >/dev/null 2>&1 || { echo "ERROR: $1 is needed to make the stand-in base images ($2)" >&2; exit 1; }; }

# --- python: debootstrap bookworm (python3 3.11, as python:3.11-slim has)
py_tar="$cache/python-3.11-bookworm.tar"
if [ ! -s "$py_tar" ]; then
  need debootstrap "apt-get install debootstrap"
  mirror="${KAVIER_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
  root="$work/python-root"
  debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
    bookworm "$root" "$mirror" >"$work/debootstrap.log" 2>&1 || { tail -n 20 "$work/debootstrap.log" >&2; exit 1; }
  # the host's locally added CAs (a proxy's, a site's): without them pip inside the build fails TLS checks
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
  fi
  chroot "$root" update-ca-certificates >/dev/null 2>&1
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  tar -C "$root" -cf "$py_tar.part" . && mv "$py_tar.part" "$py_tar"
fi

# --- jdk: the host's JDK >= 21 (JAVA_HOME, else the newest under /usr/lib/jvm)
jdk="${KAVIER_STANDIN_JDK:-}"
if [ -z "$jdk" ]; then
  for d in ${JAVA_HOME:-} /usr/lib/jvm/*; do
    [ -x "$d/bin/javac" ] || continue
    v="$("$d/bin/java" -XshowSettings:properties -version 2>&1 | sed -n 's/ *java.specification.version = //p')"
    if [ "${v%%.*}" -ge 21 ] 2>/dev/null; then jdk="$d"; fi
  done
fi
[ -n "$jdk" ] || { echo "ERROR: no JDK >= 21 on this machine for the stand-in JDK image (set KAVIER_STANDIN_JDK=DIR)" >&2; exit 1; }
# cached per JDK release: an updated host JDK makes a new tarball
jdk_tar="$cache/jdk-$(cat "$jdk/release" 2>/dev/null | sha256sum | cut -c1-12).tar"
if [ ! -s "$jdk_tar" ]; then
  mkdir -p "$work/jdk-root/opt/java"
  cp -rL "$jdk" "$work/jdk-root/opt/java/openjdk"   # -L: Debian links lib/security/cacerts to /etc
  tar -C "$work/jdk-root" -cf "$jdk_tar.part" . && mv "$jdk_tar.part" "$jdk_tar"
fi

# --- maven: the binary distribution from Maven Central, its SHA-512 checked
mvn_tar="$cache/maven-$MAVEN_VERSION.tar"
if [ ! -s "$mvn_tar" ]; then
  url="https://repo.maven.apache.org/maven2/org/apache/maven/apache-maven/$MAVEN_VERSION/apache-maven-$MAVEN_VERSION-bin.tar.gz"
  curl -fsSL -o "$work/maven.tgz" "$url"
  echo "$(curl -fsSL "$url.sha512" | cut -d' ' -f1)  $work/maven.tgz" | sha512sum -c --quiet
  mkdir -p "$work/maven-root/usr/share"
  tar -C "$work/maven-root/usr/share" -xzf "$work/maven.tgz"
  mv "$work/maven-root/usr/share/apache-maven-$MAVEN_VERSION" "$work/maven-root/usr/share/maven"
  tar -C "$work/maven-root" -cf "$mvn_tar.part" . && mv "$mvn_tar.part" "$mvn_tar"
fi

"$DOCKER" import "$py_tar" kavier-standin/python:3.11 >/dev/null
"$DOCKER" import "$jdk_tar" kavier-standin/jdk >/dev/null
"$DOCKER" import "$mvn_tar" kavier-standin/maven:3.9 >/dev/null
