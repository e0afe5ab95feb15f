#!/usr/bin/env bash
# Installs the Debian packages the images and the local cluster's real nodes need, only those missing
# (idempotent: nothing to do is a no-op that touches neither apt nor the network).
#
#   hack/host-packages.sh     # run by hack/setup.sh; needs root (or sudo) only when something is missing
set -euo pipefail

packages=(
  podman                       # images.py: builds every image (podman build/import/save), runs them in tests
  mmdebstrap                   # images.py: the Debian base image, from Debian's own packages
  gcc libc6-dev                # images.py: the pause image's static binary (gcc -static)
  busybox-static               # images.py: the busybox image for test pods
  skopeo                       # real nodes: copies image archives into the local registry
  containerd                   # real nodes: each node's container runtime (CRI)
  runc                         # real nodes: the OCI runtime containerd starts containers with
  containernetworking-plugins  # real nodes: CNI plugins for the pod network (bridge, host-local, portmap, loopback)
  iptables                     # real nodes: kube-proxy's Services, the CNI bridge's masquerading
  iproute2                     # real nodes: network namespaces and veth pairs (ip netns, ip link)
  conntrack                    # real nodes: kube-proxy cleans up stale Service connections with it
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null; then
  echo "host-packages.sh: missing ${missing[*]}, and this is not a Debian-like system: install them yourself" >&2
  exit 1
fi
sudo=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "host-packages.sh: missing ${missing[*]}: run this script as root" >&2; exit 1; }
  sudo=(sudo)
fi
echo "[host-packages] installing ${missing[*]}" >&2
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
