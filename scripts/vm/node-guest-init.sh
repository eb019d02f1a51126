#!/bin/sh
# /init of the node guest VM (busybox sh), see scripts/vm/node-guest.ts.
# Mounts the pseudo filesystems, loads the modules (nbd, ext4, e1000, virtio + 9p),
# brings up eth0 (10.0.2.15, the host's forwards are on $NG_HOST), mounts the repo
# read-only over 9p at $NG_REPO, runs /etc/ng/script.sh as root and powers off.
# Everything this /init and the script print goes to /dev/ttyS1, a second serial port the
# runner reads on its own socket, so kernel messages on the console (ttyS0) can never split
# a RESULT or NG line. Markers (parsed by the runner):
#   NG init|modules|ready UPTIME   progress, with the guest's uptime in seconds
#   NG FAIL what                   setup failed (then NG EXIT 255)
#   NG EXIT n                      the script's exit code, right before poweroff
# Parameters come from /etc/ng/env, written per run by the runner.
/bin/busybox mkdir -p /proc /sys /dev /tmp /run /mnt
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
/bin/busybox --install -s
export PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root
if [ -c /dev/ttyS1 ] && stty -F /dev/ttyS1 raw -echo 2>/dev/null; then
  exec </dev/null >/dev/ttyS1 2>&1
else
  echo "NG: no /dev/ttyS1, output goes to the console"
fi
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs -o mode=755 tmpfs /run
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
set -a
. /etc/ng/env
set +a
echo "$ng_printk" > /proc/sys/kernel/printk

up() { cut -d' ' -f1 /proc/uptime; }
bye() {
  sync
  echo "NG EXIT $1"
  # stty sets the line with TCSADRAIN: it returns once ttyS1 has sent everything.
  stty -F /dev/ttyS1 raw -echo 2>/dev/null
  sleep 0.2
  poweroff -f
  sleep 30
}
fail() {
  echo "NG FAIL $*"
  dmesg | tail -n 20 | sed 's/^/  | /'
  bye 255
}

echo "NG init $(up)"
for m in $ng_modules; do
  case "$m" in
    */nbd.ko) insmod "$m" nbds_max="$ng_nbds_max" || fail "insmod $m" ;;
    *) insmod "$m" || fail "insmod $m" ;;
  esac
done
echo "NG modules $(up)"

ip link set lo up || fail "ip link set lo up"
ip link set eth0 up || fail "ip link set eth0 up"
ip addr add 10.0.2.15/24 dev eth0 || fail "ip addr add"
ip route add default via 10.0.2.2 || fail "ip route add"

mkdir -p "$NG_REPO"
# The virtio-9p PCI device is probed when virtio_pci loads; give a slow TCG guest a moment.
n=0
until mount -t 9p -o "$ng_9p_opts" repo "$NG_REPO" 2>/tmp/ng-9p.err; do
  n=$((n + 1))
  [ $n -lt 20 ] || fail "mount -t 9p -o $ng_9p_opts repo $NG_REPO: $(cat /tmp/ng-9p.err)"
  sleep 0.5
done
[ -d "$NG_REPO/dist" ] || fail "$NG_REPO/dist missing on the 9p mount"
echo "NG ready $(up)"

cd /root
/bin/sh /etc/ng/script.sh </dev/null
bye $?
