# kind's node base image (images/base of the kind release the stacks pin), on the debootstrapped Debian image, with
# Debian's containerd, runc and CNI plugins instead of kind's own builds of them (which come from GitHub).
ARG BASE
FROM ${BASE}
# kind's package list, plus Debian's container runtime and ipset for kube-router's NetworkPolicy firewall.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
       systemd conntrack iptables nftables iproute2 ethtool util-linux mount kmod libseccomp2 pigz \
       bash ca-certificates curl jq procps \
       containerd runc containernetworking-plugins ipset \
    && rm -rf /var/lib/apt/lists/* \
    && find /lib/systemd/system/sysinit.target.wants/ -name "systemd-tmpfiles-setup.service" -delete \
    && rm -f /lib/systemd/system/multi-user.target.wants/* /etc/systemd/system/*.wants/* \
       /lib/systemd/system/local-fs.target.wants/* /lib/systemd/system/sockets.target.wants/*udev* \
       /lib/systemd/system/sockets.target.wants/*initctl* /lib/systemd/system/basic.target.wants/* \
    && echo "ReadKMsg=no" >> /etc/systemd/journald.conf \
    && ln -sf "$(command -v systemd)" /sbin/init
# kind's own files (entrypoint, containerd and kubelet units, containerd's config), after the packages so that
# theirs win; kind's units start containerd from /usr/local/bin and CNI plugins are looked up in /opt/cni/bin.
COPY files/ /
# This project's additions to them (.ci/kind-node/files).
COPY model-stack-files/ /
RUN chmod 0755 /usr/local/bin/* /kind/bin /kind/bin/* \
    && ln -s /usr/bin/containerd /usr/local/bin/containerd \
    && mkdir -p /opt/cni && ln -s /usr/lib/cni /opt/cni/bin \
    && ctr oci spec \
       | jq '.hooks.createContainer[.hooks.createContainer| length] |= . + {"path": "/kind/bin/mount-product-files.sh"}' \
       | jq 'del(.process.rlimits)' > /etc/containerd/cri-base.json \
    && systemctl enable kubelet.service containerd.service undo-mount-hacks.service \
    && systemctl mask systemd-binfmt.service \
    && mkdir -p /etc/kubernetes/manifests
ENV container=docker
STOPSIGNAL SIGRTMIN+3
ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]
