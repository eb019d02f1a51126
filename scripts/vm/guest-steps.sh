# Steps of the e2e VM scenario, sourced by /init in `sh -e`. Each prints what it did.
# Environment: vmt_server (guest address of the NBD server, port 10809 is fixed by
# nbd-client 3.24), vmt_export, vmt_bs (block size for -b), vmt_bigmb, vmt_nsmall,
# vmt_modules (insmod list, in order).

# busybox sh runs its own applets (mount, fstrim, ...) before $PATH; the scenario
# must use the real Debian tools, so call them by path.
mount() { /usr/bin/mount "$@"; }
umount() { /usr/bin/umount "$@"; }
fstrim() { /usr/sbin/fstrim "$@"; }
e2fsck() { /usr/sbin/e2fsck "$@"; }
mkfs_ext4() { /usr/sbin/mkfs.ext4 "$@"; }
nbd_client() { /usr/sbin/nbd-client "$@"; }

attach_nbd0() {
  # A just-detached device can stay busy for a moment; retry a few times.
  n=0
  until nbd_client "$vmt_server" 10809 /dev/nbd0 -N "$vmt_export" -b "$vmt_bs"; do
    n=$((n + 1)); [ $n -lt 5 ] || return 1; sleep 1
  done
}

check_dev() {
  lbs=$(cat /sys/block/$1/queue/logical_block_size)
  size=$(cat /sys/block/$1/size)
  echo "$1: logical_block_size=$lbs size_sectors=$size"
  [ "$lbs" = "$vmt_bs" ] || { echo "logical block size $lbs, expected $vmt_bs"; return 1; }
  [ "$size" -gt 0 ] || { echo "device has size 0"; return 1; }
}

step_modules() {
  for m in $vmt_modules; do insmod "$m"; done
  [ -e /dev/nbd0 ] && [ -e /dev/nbd1 ]
}

step_network() {
  ip link set lo up
  ip link set eth0 up
  ip addr add 10.0.2.15/24 dev eth0
  ip route add default via 10.0.2.2
  ip addr show eth0
}

step_attach() {
  attach_nbd0
  check_dev nbd0
}

step_mkfs_mount() {
  mkfs_ext4 -F -q /dev/nbd0
  mount -t ext4 /dev/nbd0 /mnt
  grep ' /mnt ' /proc/mounts
}

step_write() {
  dd if=/dev/urandom of=/mnt/big.bin bs=1M count="$vmt_bigmb" 2>&1
  mkdir /mnt/small
  i=0
  while [ $i -lt "$vmt_nsmall" ]; do
    head -c $(( (i * 1237) % 9000 + 1 )) /dev/urandom > /mnt/small/f$i
    i=$((i + 1))
  done
  # Something large to delete, so fstrim has freed extents to report.
  dd if=/dev/urandom of=/mnt/junk.bin bs=1M count=16 2>&1
  sync
  ls /mnt/small | wc -l
}

step_trim() {
  cd /mnt
  i=0
  while [ $i -lt "$vmt_nsmall" ]; do rm small/f$i; i=$((i + 3)); done
  rm junk.bin
  sync
  md5sum big.bin small/* > /tmp/sums
  out=$(fstrim -v /mnt)
  echo "$out"
  case "$out" in *"(0 bytes)"* | *": 0 bytes"* | "") echo "fstrim trimmed nothing"; return 1 ;; esac
}

step_umount_detach() {
  cd /
  umount /mnt
  nbd_client -d /dev/nbd0
  echo 3 > /proc/sys/vm/drop_caches
}

step_fsck() {
  attach_nbd0
  e2fsck -fn /dev/nbd0
}

step_verify() {
  mount -t ext4 /dev/nbd0 /mnt
  cd /mnt
  md5sum -c /tmp/sums > /tmp/verify.out || { grep -v ': OK$' /tmp/verify.out | head -n 5; return 1; }
  echo "$(wc -l < /tmp/sums) files verified"
  [ ! -e junk.bin ]
}

step_detach() {
  cd /
  umount /mnt
  nbd_client -d /dev/nbd0
}

step_automount() {
  printf '# dev host export options\nnbd1 %s %s bs=%s,conns=4\n' "$vmt_server" "$vmt_export" "$vmt_bs" > /etc/nbdtab
  printf '/dev/nbd1 /mnt ext4 defaults,_netdev,x-systemd.requires=nbd@nbd1.service,nofail 0 0\n' > /etc/fstab
  cat /etc/nbdtab /etc/fstab
  nbd_client nbd1
  check_dev nbd1
  mount -a
  grep ' /mnt ' /proc/mounts
}

step_verify_automount() {
  cd /mnt
  md5sum -c /tmp/sums > /tmp/verify.out || { grep -v ': OK$' /tmp/verify.out | head -n 5; return 1; }
  echo "$(wc -l < /tmp/sums) files verified"
}

step_parallel_write() {
  cd /mnt
  pids=""
  for w in 1 2 3 4; do
    (
      mkdir par$w
      dd if=/dev/urandom of=par$w/big.bin bs=64k count=64 2>/dev/null
      i=0
      while [ $i -lt 40 ]; do head -c $(( (i * 877 + w) % 6000 + 1 )) /dev/urandom > par$w/f$i; i=$((i + 1)); done
      sync
    ) &
    pids="$pids $!"
  done
  for p in $pids; do wait $p; done
  md5sum par1/* par2/* par3/* par4/* > /tmp/sums2
  echo "$(wc -l < /tmp/sums2) files written by 4 writers"
}

step_fsck_automount() {
  cd /
  umount /mnt
  nbd_client -d /dev/nbd1
  echo 3 > /proc/sys/vm/drop_caches
  n=0
  until nbd_client nbd1; do n=$((n + 1)); [ $n -lt 5 ] || return 1; sleep 1; done
  e2fsck -fn /dev/nbd1
  mount -a
  cd /mnt
  cat /tmp/sums /tmp/sums2 > /tmp/sums.all
  md5sum -c /tmp/sums.all > /tmp/verify.out || { grep -v ': OK$' /tmp/verify.out | head -n 5; return 1; }
  echo "$(wc -l < /tmp/sums.all) files verified after reattach"
  cd /
  umount /mnt
  nbd_client -d /dev/nbd1
}

step_kernel_log() {
  # Errors the steps above may have survived still fail the run.
  dmesg > /tmp/dmesg.txt
  if grep -iE 'wrong magic|I/O error|EXT4-fs (error|warning)|blk_update_request|timed out|dead connection|Receive control failed|call trace' /tmp/dmesg.txt > /tmp/dmesg.bad; then
    head -n 8 /tmp/dmesg.bad
    return 1
  fi
  grep -iE 'nbd|EXT4' /tmp/dmesg.txt | tail -n 12
}

step_report() {
  for f in big.bin par1/big.bin par4/f7; do
    grep " $f\$" /tmp/sums /tmp/sums2 | head -n 1 | sed 's/^[^:]*://' | while read -r sum name; do
      echo "SUM $name $sum" > /dev/console
    done
  done
}
