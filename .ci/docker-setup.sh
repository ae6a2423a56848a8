# shellcheck shell=bash
# Machine setup for Gantry's CI and for developers: PostgreSQL, Debian packages, a Docker
# engine, a local registry and the busybox test image. The one place these steps live.
#
#   source .ci/docker-setup.sh   defines the functions only (.ci/run does this)
#   bash .ci/docker-setup.sh     runs every setup step, then returns (no npm, no tests)
#
# Every step checks first and does nothing when its work is already done, so running it
# again on the same machine (dockerd, registry and image already there) is quick and safe.
#
# The sandbox (Debian 12 VM, cgroup v1 hybrid, no systemd, no public registry) shapes it:
# - No public registry can be reached, so the test image is built from busybox-static
#   with `docker import`, and pushed to a registry on loopback for the agent's pull path.
# - dockerd is started by hand (there is no systemd to do it), with its log under /tmp.
#   Its flags are explained at GANTRY_DOCKERD_FLAGS below.

# Every docker command here talks to the engine this file starts.
export DOCKER_HOST='unix:///var/run/docker.sock'

GANTRY_TEST_IMAGE_DEFAULT='gantry-test/busybox:latest'
GANTRY_REGISTRY_ADDR='127.0.0.1:5000'
GANTRY_REGISTRY_REPO='gantry/busybox:latest'
GANTRY_REGISTRY_DIR='/tmp/gantry-registry'
GANTRY_DOCKERD_LOG='/tmp/gantry-dockerd.log'
GANTRY_APT_PACKAGES=(docker.io busybox-static docker-registry chromium)

# dockerd flags, measured on this sandbox (Debian docker.io 20.10.24, containerd 1.6.20,
# runc 1.1.5, kernel 6.18, cgroup v1 hybrid, / on ext4):
# --storage-driver=overlay2   / is ext4 with d_type and the kernel has overlay; said out
#                             loud so that a failed probe can never fall back to vfs.
# --iptables=false --ip-masq=false --ip-forward=false
#                             A choice, not a need: iptables (nf_tables) works here and so
#                             would Docker's NAT. Without them containers still get the
#                             default bridge (docker0, 172.17.0.0/16): container <-> host
#                             (172.17.0.1) and container <-> container work, and `-p
#                             127.0.0.1:H:C` works through docker-proxy. What they lose is
#                             egress: no masquerade, and net.ipv4.ip_forward stays 0, so
#                             nothing a job container sends can leave this machine (this
#                             sandbox's network rules forbid traffic to any other address,
#                             and there is nowhere to go anyway), and the host's firewall
#                             is left as it was. The cost: the docker CLI prints "IPv4
#                             forwarding is disabled. Networking will not work." on each
#                             bridge `docker run` (the API's create returns no warning);
#                             only egress is meant.
#                             Job containers with --network none are unaffected.
# --exec-opt=native.cgroupdriver=cgroupfs
#                             there is no systemd; the cgroup v1 controllers are mounted.
#                             Memory (with OOMKilled), memory-swap, cpus, cpuset,
#                             pids-limit all work; blkio weight does not (kernel).
GANTRY_DOCKERD_FLAGS=(
  --host=unix:///var/run/docker.sock
  --storage-driver=overlay2
  --iptables=false
  --ip-masq=false
  --ip-forward=false
  --exec-opt=native.cgroupdriver=cgroupfs
)

ci_stage() {
  printf '[ci %4ss] %s\n' "${SECONDS}" "$*"
}

ci_die() {
  printf '[ci %4ss] FAILED: %s\n' "${SECONDS}" "$*" >&2
  exit 1
}

# Start PostgreSQL (preinstalled on this kind of machine) when 127.0.0.1:5432 does not answer.
ci_start_postgres() {
  if pg_isready -q -h 127.0.0.1; then
    ci_stage "postgres: already accepting connections"
    return 0
  fi
  local version
  version="$(ls /etc/postgresql | sort -V | tail -n 1)"
  ci_stage "postgres: starting cluster ${version}/main"
  pg_ctlcluster --skip-systemctl-redirect "${version}" main start || true
  local i
  for i in $(seq 1 60); do
    if pg_isready -q -h 127.0.0.1; then
      ci_stage "postgres: ready"
      return 0
    fi
    sleep 0.5
  done
  ci_die "postgres did not accept connections on 127.0.0.1:5432 within 30 s"
}

# Install the Debian packages, unless every one is installed already.
ci_install_packages() {
  local missing=() pkg
  for pkg in "${GANTRY_APT_PACKAGES[@]}"; do
    if [[ "$(dpkg-query -W -f='${db:Status-Status}' "${pkg}" 2>/dev/null || true)" != installed ]]; then
      missing+=("${pkg}")
    fi
  done
  if [[ ${#missing[@]} -eq 0 ]]; then
    ci_stage "apt: ${GANTRY_APT_PACKAGES[*]} already installed"
    return 0
  fi
  ci_stage "apt: installing ${missing[*]}"
  # Installing must not start services (docker.io and docker-registry ship init scripts,
  # which would start them with Debian's defaults): these are started below, our way.
  # This kind of machine ships a policy-rc.d that says so; make one only where it lacks it.
  local made_policy=0
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    made_policy=1
  fi
  local rc=0
  {
    DEBIAN_FRONTEND=noninteractive apt-get -q update -o Acquire::Retries=3 &&
      DEBIAN_FRONTEND=noninteractive apt-get -q install -y --no-install-recommends \
        -o Acquire::Retries=3 -o Dpkg::Use-Pty=0 "${missing[@]}"
  } >/tmp/gantry-apt.log 2>&1 || rc=$?
  if [[ ${made_policy} -eq 1 ]]; then rm -f /usr/sbin/policy-rc.d; fi
  if [[ ${rc} -ne 0 ]]; then
    tail -n 40 /tmp/gantry-apt.log >&2
    ci_die "apt-get failed (exit ${rc}); full log in /tmp/gantry-apt.log"
  fi
  ci_stage "apt: installed (log in /tmp/gantry-apt.log)"
}

ci_docker_answers() {
  timeout 10 docker -H unix:///var/run/docker.sock info >/dev/null 2>&1
}

# True when PID is a live (not zombie) process whose command name is NAME.
ci_pid_is() {
  local pid="$1" name="$2" stat comm
  [[ "${pid}" =~ ^[0-9]+$ ]] || return 1
  stat="$(ps -o stat= -p "${pid}" 2>/dev/null)" || return 1
  comm="$(ps -o comm= -p "${pid}" 2>/dev/null)" || return 1
  [[ "${stat}" != Z* && "${comm}" == "${name}" ]]
}

# Remove FILE when the pid in it is not a live NAME. dockerd refuses to start over a pid file
# whose process still exists, and a killed dockerd can linger as a zombie here (pid 1 of this
# sandbox does not always reap at once); it would also wait forever on a dead containerd
# named in its containerd.pid.
ci_clear_stale_pidfile() {
  local file="$1" name="$2"
  [[ -f "${file}" ]] || return 0
  if ! ci_pid_is "$(cat "${file}" 2>/dev/null)" "${name}"; then
    rm -f "${file}"
  fi
}

# Print what dockerd logged since byte OFFSET of its log.
ci_dockerd_log_since() {
  tail -c +"$(($1 + 1))" "${GANTRY_DOCKERD_LOG}" 2>/dev/null | grep -v 'level=info' | tail -n 30 >&2 || true
}

# Start dockerd in the background unless /var/run/docker.sock answers already.
ci_start_dockerd() {
  if ci_docker_answers; then
    ci_stage "dockerd: already answering on /var/run/docker.sock"
    return 0
  fi
  command -v dockerd >/dev/null || ci_die "dockerd is not installed"
  local pid offset i
  offset="$(stat -c %s "${GANTRY_DOCKERD_LOG}" 2>/dev/null || echo 0)"
  pid="$(cat /var/run/docker.pid 2>/dev/null || true)"
  if ci_pid_is "${pid}" dockerd; then
    # One is running but not answering (yet): wait for it rather than start a second.
    ci_stage "dockerd: pid ${pid} is running but not answering yet; waiting for it"
  else
    ci_clear_stale_pidfile /var/run/docker.pid dockerd
    ci_clear_stale_pidfile /var/run/docker/containerd/containerd.pid containerd
    ci_stage "dockerd: starting (log in ${GANTRY_DOCKERD_LOG})"
    # setsid and every fd redirected: it must outlive this script and must not hold the CI
    # log's pipe open.
    setsid dockerd "${GANTRY_DOCKERD_FLAGS[@]}" </dev/null >>"${GANTRY_DOCKERD_LOG}" 2>&1 &
    pid=$!
  fi
  for i in $(seq 1 120); do
    if ci_docker_answers; then
      ci_stage "dockerd: ready (pid ${pid})"
      return 0
    fi
    if ! ci_pid_is "${pid}" dockerd; then
      ci_dockerd_log_since "${offset}"
      ci_die "dockerd (pid ${pid}) exited during startup; log in ${GANTRY_DOCKERD_LOG}"
    fi
    sleep 0.5
  done
  ci_dockerd_log_since "${offset}"
  ci_die "dockerd did not answer on /var/run/docker.sock within 60 s; log in ${GANTRY_DOCKERD_LOG}"
}

ci_registry_answers() {
  curl -fsS -m 5 -o /dev/null "http://${GANTRY_REGISTRY_ADDR}/v2/" 2>/dev/null
}

# Start Debian's docker-registry (distribution v2) on 127.0.0.1:5000 unless it answers.
ci_start_registry() {
  if ci_registry_answers; then
    ci_stage "registry: already answering on ${GANTRY_REGISTRY_ADDR}"
    return 0
  fi
  command -v docker-registry >/dev/null || ci_die "docker-registry is not installed"
  mkdir -p "${GANTRY_REGISTRY_DIR}/data"
  cat >"${GANTRY_REGISTRY_DIR}/config.yml" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: ${GANTRY_REGISTRY_DIR}/data
  delete:
    enabled: true
http:
  addr: ${GANTRY_REGISTRY_ADDR}
EOF
  ci_stage "registry: starting on ${GANTRY_REGISTRY_ADDR} (log in ${GANTRY_REGISTRY_DIR}/registry.log)"
  setsid docker-registry serve "${GANTRY_REGISTRY_DIR}/config.yml" \
    </dev/null >>"${GANTRY_REGISTRY_DIR}/registry.log" 2>&1 &
  local i
  for i in $(seq 1 60); do
    if ci_registry_answers; then
      ci_stage "registry: ready"
      return 0
    fi
    sleep 0.5
  done
  tail -n 30 "${GANTRY_REGISTRY_DIR}/registry.log" >&2 || true
  ci_die "docker-registry did not answer on ${GANTRY_REGISTRY_ADDR} within 30 s"
}

# Build gantry-test/busybox:latest from busybox-static with `docker import`: no registry needed.
ci_build_test_image() {
  local image="${1:-${GANTRY_TEST_IMAGE_DEFAULT}}"
  if docker image inspect "${image}" >/dev/null 2>&1; then
    ci_stage "image: ${image} already exists"
    return 0
  fi
  [[ -x /bin/busybox ]] || ci_die "/bin/busybox is missing (package busybox-static)"
  ci_stage "image: building ${image} from /bin/busybox"
  local root
  root="$(mktemp -d /tmp/gantry-busybox-rootfs.XXXXXX)"
  mkdir -p "${root}"/{bin,sbin,usr/bin,usr/sbin,etc,root,home,tmp,proc,sys,dev,run,var/tmp}
  chmod 1777 "${root}/tmp" "${root}/var/tmp"
  chmod 700 "${root}/root"
  cp /bin/busybox "${root}/bin/busybox"
  # One absolute symlink per applet, at the path busybox itself gives for it (bin/sh,
  # usr/bin/head, sbin/ifconfig, ...).
  local applet
  while IFS= read -r applet; do
    [[ -n "${applet}" && "${applet}" != bin/busybox ]] || continue
    mkdir -p "${root}/$(dirname "${applet}")"
    ln -sf /bin/busybox "${root}/${applet}"
  done < <(/bin/busybox --list-full)
  [[ -L "${root}/bin/sh" ]] || ci_die "busybox --list-full gave no bin/sh"
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' \
    >"${root}/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"${root}/etc/group"
  printf 'hosts: files dns\n' >"${root}/etc/nsswitch.conf"
  # Known: Debian's busybox-static 1.35 `wget` segfaults (exit 139), on the host as well;
  # tests that need an HTTP client in the container use `nc` (printf 'GET / ...' | nc).
  tar --numeric-owner --owner=0 --group=0 -C "${root}" -cf - . |
    docker import \
      --change 'CMD ["sh"]' \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --message 'gantry test image: busybox-static from Debian' \
      - "${image}" >/dev/null
  rm -rf "${root}"
  ci_stage "image: built ${image}"
}

# Put the test image into the local registry (unless it holds it already), then drop the
# local registry tag so that tests really pull it.
ci_push_test_image() {
  local image="${1:-${GANTRY_TEST_IMAGE_DEFAULT}}"
  local remote="${GANTRY_REGISTRY_ADDR}/${GANTRY_REGISTRY_REPO}"
  local repo="${GANTRY_REGISTRY_REPO%%:*}" tag="${GANTRY_REGISTRY_REPO##*:}"
  if curl -fsS -m 5 -o /dev/null \
    -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
    "http://${GANTRY_REGISTRY_ADDR}/v2/${repo}/manifests/${tag}" 2>/dev/null; then
    ci_stage "registry: already holds ${remote}"
  else
    ci_stage "registry: pushing ${remote}"
    docker tag "${image}" "${remote}"
    docker push "${remote}" >/dev/null || ci_die "docker push ${remote} failed"
  fi
  if docker image inspect "${remote}" >/dev/null 2>&1; then
    docker image rm "${remote}" >/dev/null
  fi
  ci_stage "registry: ${remote} ready; local tag removed so tests pull it"
}

ci_setup_all() {
  ci_start_postgres
  ci_install_packages
  ci_start_dockerd
  ci_start_registry
  ci_build_test_image
  ci_push_test_image
}

# Run directly (not sourced): do the whole machine setup and stop there.
if [[ "${BASH_SOURCE[0]}" == "${0}" ]]; then
  set -euo pipefail
  ci_setup_all
  ci_stage "setup done"
fi
