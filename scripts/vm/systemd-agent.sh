#!/bin/bash
# The systemd VM's test agent (installed as /usr/local/sbin/iscsi-nbd-e2e-agent, run by
# iscsi-nbd-e2e-agent.service; see scripts/vm/systemd-vm.ts for the host side).
# It talks to the runner over the virtio-serial port "e2e", one line per message:
#   guest -> host  HELLO <boot_id> <uptime>          once the agent runs (every boot)
#   host -> guest  RUN <id> <base64 bash script>     run it as root (several may overlap)
#   guest -> host  DONE <id> <exit code> <base64 of its stdout+stderr>
# Lines are written under a lock, so overlapping commands never interleave.
set -u
port=/dev/virtio-ports/e2e
n=0
until [ -e "$port" ]; do
  n=$((n + 1))
  [ $n -lt 600 ] || { echo "no $port" >&2; exit 1; }
  sleep 0.1
done
dir=/run/iscsi-nbd-e2e/agent
mkdir -p "$dir"
exec 3<> "$port"
send() {
  { flock 9; printf '%s\n' "$1" >&3; } 9> "$dir/lock"
}
send "HELLO $(cat /proc/sys/kernel/random/boot_id) $(cut -d' ' -f1 /proc/uptime)"
while IFS= read -r line <&3; do
  set -- $line
  [ "${1:-}" = RUN ] && [ $# -ge 2 ] || continue
  id=$2
  printf '%s' "${3:-}" | base64 -d > "$dir/cmd.$id"
  (
    bash "$dir/cmd.$id" > "$dir/out.$id" 2>&1 < /dev/null
    rc=$?
    send "DONE $id $rc $(base64 -w 0 < "$dir/out.$id")"
    rm -f "$dir/cmd.$id" "$dir/out.$id"
  ) &
done
