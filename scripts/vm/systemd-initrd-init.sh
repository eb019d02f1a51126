#!/bin/sh
# /init of the systemd VM's initramfs (busybox; see scripts/vm/systemd-image.ts).
# Debian's kernel has virtio_blk and ext4 as modules: load them (list in /etc/initrd-modules,
# dependencies first), mount root= (default /dev/vda) read-write and switch_root to
# /sbin/init, which is systemd. On failure it says why on the console and powers off,
# so the runner sees qemu exit instead of a reboot loop.
/bin/busybox mkdir -p /proc /sys /dev /newroot
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
/bin/busybox --install -s
export PATH=/usr/sbin:/usr/bin:/sbin:/bin

fail() {
  echo "initrd: $*"
  sleep 1
  poweroff -f
  sleep 30
}

echo "initrd: start $(cut -d' ' -f1 /proc/uptime)"
while read -r m; do
  [ -n "$m" ] || continue
  insmod "$m" 2>/tmp/insmod.err || grep -q 'File exists' /tmp/insmod.err || fail "insmod $m: $(cat /tmp/insmod.err)"
done < /etc/initrd-modules

root=/dev/vda
for arg in $(cat /proc/cmdline); do
  case "$arg" in root=*) root=${arg#root=} ;; esac
done
n=0
until [ -b "$root" ]; do
  n=$((n + 1))
  [ $n -lt 100 ] || fail "no $root after 10 s"
  sleep 0.1
done
mount -t ext4 -o rw "$root" /newroot || fail "mount $root"
# /sbin/init is an absolute link (to /lib/systemd/systemd): test the link, not its target.
[ -L /newroot/sbin/init ] || [ -x /newroot/sbin/init ] || fail "no /sbin/init on $root"
echo "initrd: switch_root $(cut -d' ' -f1 /proc/uptime)"
mount --move /dev /newroot/dev
mount --move /sys /newroot/sys
mount --move /proc /newroot/proc
exec switch_root /newroot /sbin/init
