#!/bin/bash
# Without CAP_SYS_RESOURCE in the node's bounding set (a VM or container that withholds it, as rootless kind does),
# no process may lower its oom_score_adj, so runc fails every pod sandbox whose spec asks for a lower one ("can't get
# final child's PID from pipe"). containerd then keeps each container's oom_score_adj at or above its own, as
# kind's entrypoint configures it for user namespaces.
set -eu
bounding=$(awk '/^CapBnd:/ {print $2}' /proc/self/status)
if (( (0x$bounding >> 24 & 1) == 0 )); then
  sed -i 's/restrict_oom_score_adj = false/restrict_oom_score_adj = true/' /etc/containerd/config.toml
fi
