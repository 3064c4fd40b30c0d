#!/usr/bin/env bash
# The container pipeline run for real: Docker engine, base images, `docker-compose build`, the run
# service (`run` and `up`), the sweep on the Dask profile, the plan service and three bad inputs. tests/test_docker_e2e.py
# drives it and checks the outputs; by hand:
#
#   bash tests/docker/e2e.sh WORKDIR      # WORKDIR/exp-*/ hold the experiment folders and their results
#
# Engine: one that already answers (DOCKER_HOST or the default socket) is used and left running;
# otherwise (as root) Debian's docker.io, containerd, runc, docker-compose, debootstrap and iptables are
# installed if absent and containerd + dockerd are started here on a data root under WORKDIR, then
# stopped by PID at the end, with the docker0 bridge removed and the iptables rules put back as found.
# Base images: the real ones when `docker pull` works, else local stand-ins (standin_images.sh).
# Prints "step NAME: SECONDS s" per step and writes WORKDIR/steps.json and WORKDIR/rc-*.txt /
# WORKDIR/*.log for the checks. Only one run at a time per machine (a lock in /tmp).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
work="$(mkdir -p "$1" && cd "$1" && pwd)"
: "${KAVIER_DOCKER_TEST_UID:=$( [ "$(id -u)" = 0 ] && echo 4242 || id -u )}"
: "${KAVIER_DOCKER_TEST_GID:=$( [ "$(id -u)" = 0 ] && echo 4242 || id -g )}"
PY="${PYTHON:-python3}"

# the plan service's input: the built-in plan example cut to 2 shapes (H100 or A100, TP 1, prefix block),
# made first, so that a non-container reference can run on the same files meanwhile
mkdir -p "$work/plan-inputs"
cp "$repo/kavier_opendc/data/plan_chat_workload.yaml" "$work/plan-inputs/"
"$PY" - "$repo/kavier_opendc/data/plan_example.yaml" "$work/plan-inputs/plan.yaml.part" <<'PLAN'
import sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
doc["candidates"].update(tp=[1], prefix_cache=["block"])
yaml.safe_dump(doc, open(sys.argv[2], "w"), sort_keys=False)
PLAN
mv "$work/plan-inputs/plan.yaml.part" "$work/plan-inputs/plan.yaml"

exec 9>/tmp/kavier-docker-e2e.lock
flock 9

steps="$work/steps.json"
echo "{}" >"$steps"
t_step=0
step_begin() { t_step=$(date +%s.%N); echo "== step $1" >&2; }
step_end() {
  local dt
  dt=$(echo "$(date +%s.%N) - $t_step" | bc)
  printf 'step %s: %.1f s\n' "$1" "$dt"
  "$PY" -c 'import json,sys; p=sys.argv[1]; d=json.load(open(p)); d[sys.argv[2]]=round(float(sys.argv[3]),1); json.dump(d,open(p,"w"),indent=1)' "$steps" "$1" "$dt"
}

as_root=""
if [ "$(id -u)" -ne 0 ]; then as_root="sudo"; fi

# ----------------------------------------------------------------- the engine
started_engine=0
pids=()
iptables_saved=""
had_docker0=0
cleanup() {
  local rc=$?
  set +e
  if [ -n "${COMPOSE_PROJECT_NAME:-}" ] && [ -n "${compose:-}" ]; then
    for p in "" "--profile dask"; do $compose $p down --remove-orphans >/dev/null 2>&1; done
  fi
  if [ "$started_engine" = 1 ]; then
    # dockerd first (it stops its containers), then containerd; each by the PID started here
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
      kill "${pids[$i]}" 2>/dev/null
      for _ in $(seq 1 60); do kill -0 "${pids[$i]}" 2>/dev/null || break; sleep 0.5; done
      kill -9 "${pids[$i]}" 2>/dev/null
    done
    if [ "$had_docker0" = 0 ] && ip link show docker0 >/dev/null 2>&1; then $as_root ip link delete docker0; fi
    for br in $(ip -o link show type bridge 2>/dev/null | sed -n 's/^[0-9]*: \(br-[0-9a-f]*\).*/\1/p'); do
      grep -qx "$br" "$work/bridges-before.txt" 2>/dev/null || $as_root ip link delete "$br"
    done
    # dockerd's chains and rules (and its FORWARD policy DROP) out, then the tables exactly as found
    if [ -n "$iptables_saved" ]; then
      for t in filter nat; do $as_root iptables -t "$t" -F; $as_root iptables -t "$t" -X; done
      for c in INPUT FORWARD OUTPUT; do $as_root iptables -P "$c" ACCEPT; done
      [ -s "$iptables_saved" ] && $as_root iptables-restore <"$iptables_saved"
    fi
    # the engine's data root (images, layers, build cache): a few GB, not kept
    $as_root rm -rf "$work/docker-root"
  else
    [ -n "${KAVIER_IMAGE:-}" ] && docker image rm -f "$KAVIER_IMAGE" >/dev/null 2>&1
  fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 143' TERM INT  # (the EXIT trap then stops what was started)

step_begin engine
docker_cli=""
for c in /usr/bin/docker "$(command -v docker 2>/dev/null || true)"; do
  if [ -n "$c" ] && [ -x "$c" ] && "$c" info >/dev/null 2>&1; then docker_cli="$c"; break; fi
done
if [ -z "$docker_cli" ]; then
  if ! command -v dockerd >/dev/null 2>&1 || ! command -v containerd >/dev/null 2>&1 \
     || ! command -v docker-compose >/dev/null 2>&1 || ! command -v debootstrap >/dev/null 2>&1; then
    echo "installing the Docker engine with apt-get (docker.io containerd runc docker-compose debootstrap iptables)" >&2
    $as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $as_root apt-get install -y -qq --no-install-recommends \
      docker.io containerd runc docker-compose debootstrap iptables >/dev/null
  fi
  ip -o link show type bridge 2>/dev/null | sed -n 's/^[0-9]*: \([^:@]*\).*/\1/p' >"$work/bridges-before.txt"
  ip link show docker0 >/dev/null 2>&1 && had_docker0=1
  iptables_saved="$work/iptables-before.txt"
  $as_root iptables-save >"$iptables_saved"
  root="$work/docker-root"
  mkdir -p "$root/run"
  started_engine=1
  $as_root containerd --root "$root/containerd" --state "$root/run/containerd" \
    --address "$root/run/containerd.sock" >"$work/containerd.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 60); do [ -S "$root/run/containerd.sock" ] && break; sleep 0.5; done
  $as_root dockerd --containerd="$root/run/containerd.sock" --data-root="$root/data" \
    --exec-root="$root/run/exec" --pidfile="$root/run/docker.pid" --host="unix://$root/run/docker.sock" \
    --storage-driver=overlay2 >"$work/dockerd.log" 2>&1 &
  pids+=($!)
  export DOCKER_HOST="unix://$root/run/docker.sock"
  docker_cli=/usr/bin/docker
  for _ in $(seq 1 120); do "$docker_cli" info >/dev/null 2>&1 && break; sleep 0.5; done
  "$docker_cli" info >/dev/null || { tail -n 20 "$work/dockerd.log" >&2; exit 1; }
fi
# docker-compose 1.29 builds through the `docker` on PATH: the client that goes with this engine
mkdir -p "$work/bin"
ln -sf "$docker_cli" "$work/bin/docker"
export PATH="$work/bin:$PATH" DOCKER_BUILDKIT=1 COMPOSE_DOCKER_CLI_BUILD=1
if command -v docker-compose >/dev/null 2>&1; then compose="docker-compose"; else compose="docker compose"; fi
export COMPOSE_PROJECT_NAME="kavier-e2e"
export KAVIER_IMAGE="kavier-opendc:e2e"
compose="$compose -f $repo/docker-compose.yml"
docker version --format 'engine {{.Server.Version}}, client {{.Client.Version}}' >&2
step_end engine

# ----------------------------------------------------------------- base images
step_begin base_images
real=1
for img in python:3.11-slim eclipse-temurin:21-jdk maven:3.9-eclipse-temurin-21; do
  if ! docker image inspect "$img" >/dev/null 2>&1 && ! timeout 120 docker pull -q "$img" >/dev/null 2>&1; then
    real=0
    break
  fi
done
if [ "$real" = 1 ]; then
  echo "base images: the real ones (a registry answers)" >&2
  echo real >"$work/base-images.txt"
else
  echo "base images: no registry answers; local stand-ins (tests/docker/standin_images.sh)" >&2
  DOCKER=docker bash "$here/standin_images.sh"
  export KAVIER_PYTHON_IMAGE=kavier-standin/python:3.11 KAVIER_JDK_IMAGE=kavier-standin/jdk \
    KAVIER_MAVEN_IMAGE=kavier-standin/maven:3.9
  echo standin >"$work/base-images.txt"
fi
step_end base_images

# ----------------------------------------------------------------- the image
step_begin build
# OpenDC from the local Maven repository named by KAVIER_OPENDC_REPO (as `make setup` does) when this
# machine's Maven has no org/opendc/: copied into the build context, where the Dockerfile can read it
ctx_repo=""
if [ -n "${KAVIER_OPENDC_REPO:-}" ] && [ -d "$KAVIER_OPENDC_REPO/org/opendc" ]; then
  ctx_repo="$repo/.opendc-m2-e2e"
  rm -rf "$ctx_repo"
  cp -r "$KAVIER_OPENDC_REPO" "$ctx_repo"
  export KAVIER_OPENDC_REPO_DIR=.opendc-m2-e2e
fi
export KAVIER_UID="$KAVIER_DOCKER_TEST_UID" KAVIER_GID="$KAVIER_DOCKER_TEST_GID"
set +e
(cd "$repo" && $compose build --progress plain run) >"$work/build.log" 2>&1
build_rc=$?
set -e
[ -n "$ctx_repo" ] && rm -rf "$ctx_repo"
if [ "$build_rc" != 0 ]; then tail -n 40 "$work/build.log" >&2; echo "ERROR: docker-compose build failed" >&2; exit 1; fi
docker image inspect "$KAVIER_IMAGE" --format '{{.Size}}' >"$work/image-size.txt"
step_end build

# ----------------------------------------------------------------- experiment folders
# each owned by the test user (a non-root one when this runs as root), so that the results written in
# the container must belong to it; the work folder itself is readable by that user
chmod 755 "$work"
new_exp() {
  local d="$work/$1"
  rm -rf "$d"
  "$PY" -m kavier_opendc.cli demo --init "$d" >/dev/null
  [ "$(id -u)" = 0 ] && chown -R "$KAVIER_UID:$KAVIER_GID" "$d"
  echo "$d"
}
# runs a compose command with KAVIER_EXPERIMENTS=$1; its exit code into rc-$2.txt, its output into $2.log
compose_case() {
  local exp="$1" name="$2"
  shift 2
  set +e
  KAVIER_EXPERIMENTS="$exp" $compose "$@" >"$work/$name.log" 2>&1
  echo $? >"$work/rc-$name.txt"
  set -e
  KAVIER_EXPERIMENTS="$exp" $compose --profile dask down --remove-orphans >/dev/null 2>&1 || true
  echo "$name: exit code $(cat "$work/rc-$name.txt")" >&2
}

step_begin run
compose_case "$(new_exp exp-run)" run run --rm run
step_end run

step_begin up
compose_case "$(new_exp exp-up)" up up --exit-code-from run run
step_end up

step_begin sweep_dask
compose_case "$(new_exp exp-dask)" sweep-dask --profile dask run --rm sweep-dask
step_end sweep_dask

step_begin plan
d="$(new_exp exp-plan)"
cp "$work/plan-inputs/"* "$d/"
[ "$(id -u)" = 0 ] && chown -R "$KAVIER_UID:$KAVIER_GID" "$d"
compose_case "$d" plan --profile plan run --rm plan
step_end plan

step_begin bad_inputs
# a missing experiments folder: refused before any container starts, and never created
compose_case "$work/exp-missing" bad-missing up --exit-code-from run run
# a folder the container's user cannot write to (read-only for others, owned by someone else)
d="$(new_exp exp-unwritable)"
if [ "$(id -u)" = 0 ]; then chown -R 0:0 "$d"; fi
chmod -R a-w "$d"
compose_case "$d" bad-unwritable up --exit-code-from run run
chmod -R u+w "$d"
# an invalid experiment file
d="$(new_exp exp-invalid)"
sed -i 's/^\(\s*\)replicas:.*/\1replicas: many/' "$d/experiment.yaml"
compose_case "$d" bad-invalid up --exit-code-from run run
step_end bad_inputs

# what the compose project left (each case ended with `down`): nothing
{ docker ps -aq --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME"
  docker network ls -q --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME"; } >"$work/leftovers.txt"
