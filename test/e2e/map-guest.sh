# Guest side of test/e2e/map.test.ts: runs as root inside the VM (busybox sh -e),
# with the daemon (node + this repo over 9p) in the guest and tgtd on the host.
# Environment: URL512, URL4K, URLSWAP (iscsi:// URLs through the guest forward),
# URLMANY (the same target's URL without a LUN: LUNs 4..7 are mapped at the end),
# IQN (that target's name), INAME (our initiator name). Prints "RESULT key value" lines for the host.
set -eu

NODE=/usr/local/bin/node
CLI="$NODE /opt/iscsi-nbd/bin/iscsi-nbd.js"
SD=/tmp/state
LOG=/tmp/daemon.log
mount() { /usr/bin/mount "$@"; }
umount() { /usr/bin/umount "$@"; }
mkfs_ext4() { /usr/sbin/mke2fs -t ext4 -F -q "$@"; }
fsck_ro() { /usr/sbin/e2fsck -fn "$@"; }

now_cs() { cut -d' ' -f1 /proc/uptime | tr -d .; } # centiseconds since boot

step() { echo "== $*"; }

on_exit() {
  rc=$?
  if [ $rc != 0 ]; then
    echo "--- daemon logs (last lines)"
    tail -n 40 "$SD/daemon.log" "$LOG" 2> /dev/null || true
    echo "--- dmesg (last lines)"
    dmesg | tail -n 25
  fi
}
trap on_exit EXIT

daemon_pid() { cat /tmp/daemon.pid; }

start_daemon() {
  $CLI serve --state-dir "$SD" --initiator-name "$INAME" --log-format json >> "$LOG" 2>&1 &
  echo $! > /tmp/daemon.pid
}

# Wait until the daemon answers on its control socket (bounded).
wait_daemon() {
  n=0
  until $CLI list-mapped --state-dir "$SD" > /dev/null 2>&1; do
    n=$((n + 1)); [ $n -lt 240 ] || { echo "daemon did not come up"; tail -n 30 "$LOG"; return 1; }
    sleep 0.5
  done
}

# Wait until the writer has finished N more rounds (bounded).
wait_writer() {
  want=$(( $(wc -l < /tmp/writer.log) + $1 ))
  n=0
  while [ "$(wc -l < /tmp/writer.log)" -lt "$want" ]; do
    n=$((n + 1)); [ $n -lt 400 ] || { echo "writer made no progress"; return 1; }
    sleep 0.5
  done
}

io_errors() { dmesg | grep -ciE 'I/O error|Buffer I/O|EXT4-fs error|JBD2: I/O|Remounting filesystem read-only' || true; }

check_lbs() {
  d=${1#/dev/}
  lbs=$(cat /sys/block/$d/queue/logical_block_size)
  echo "$1: logical block size $lbs"
  [ "$lbs" = "$2" ]
}

step "1. map with no block size given: a 512-byte and a 4096-byte LUN"
t0=$(now_cs)
D512=$($CLI map "$URL512" --state-dir "$SD" --initiator-name "$INAME")
echo "RESULT map_first_cs $(( $(now_cs) - t0 ))"
D4K=$($CLI map "$URL4K" --state-dir "$SD" --initiator-name "$INAME")
echo "mapped $D512 and $D4K"
echo "RESULT dev512 $D512"
echo "RESULT dev4k $D4K"
check_lbs "$D512" 512
check_lbs "$D4K" 4096
# The daemon map started runs detached; from now on this script starts and kills it.
cp "$SD/daemon.json" /tmp/first-owner.json
sed -n 's/.*"pid":\([0-9]*\).*/\1/p' "$SD/daemon.json" > /tmp/daemon.pid
cat "$SD/daemon.log" >> "$LOG" || true
$CLI map "$URL4K" --state-dir "$SD" --initiator-name "$INAME" 2> /tmp/again.err && { echo "mapping a mapped LUN again succeeded"; exit 1; }
grep -q "$D4K" /tmp/again.err
echo "RESULT remap_refused 1"
mkdir -p /mnt/a /mnt/b
mkfs_ext4 "$D512"
mkfs_ext4 "$D4K"
mount -t ext4 "$D512" /mnt/a
mount -t ext4 "$D4K" /mnt/b
dd if=/dev/urandom of=/mnt/a/base bs=1k count=3000 2> /dev/null
dd if=/dev/urandom of=/mnt/b/base bs=1k count=3000 2> /dev/null
sync
md5sum /mnt/a/base /mnt/b/base > /tmp/base.md5
$CLI list-mapped --state-dir "$SD"

step "2. writer with fsync; kill -9 of the daemon, a new one 3 s later"
: > /tmp/writer.log
: > /tmp/writer.fail
: > /tmp/writer.md5
(
  i=0
  while [ ! -e /tmp/writer.stop ]; do
    if [ -e /tmp/writer.pause ]; then touch /tmp/writer.paused; sleep 0.1; continue; fi
    rm -f /tmp/writer.paused
    f=/mnt/b/w$((i % 6))
    if dd if=/dev/urandom of=$f.tmp bs=4k count=64 conv=fsync 2> /dev/null && mv $f.tmp $f && sync; then
      echo "$(md5sum < $f | cut -d' ' -f1) $f" >> /tmp/writer.md5
    else
      echo "round $i failed" >> /tmp/writer.fail
    fi
    echo "$(now_cs)" >> /tmp/writer.log
    i=$((i + 1))
  done
) &
WRITER=$!
wait_writer 5
kill -9 "$(daemon_pid)"
killed=$(now_cs)
sleep 3
start_daemon
wait_daemon
wait_writer 5
echo "RESULT kill9_resume_cs $(( $(now_cs) - killed ))"
[ "$(io_errors)" = 0 ] || { dmesg | tail -n 30; exit 1; }

step "3. SIGTERM (the upgrade path): drains, exits, the next daemon takes over"
kill -TERM "$(daemon_pid)"
termed=$(now_cs)
n=0
while kill -0 "$(daemon_pid)" 2> /dev/null; do n=$((n + 1)); [ $n -lt 120 ] || { echo "daemon ignored SIGTERM"; exit 1; }; sleep 0.5; done
echo "RESULT term_exit_cs $(( $(now_cs) - termed ))"
start_daemon
wait_daemon
wait_writer 5
echo "RESULT term_resume_cs $(( $(now_cs) - termed ))"
grep -q '"device reattached"' "$LOG"

step "fault: kill -9 in the middle of reattaching, then a clean start"
kill -9 "$(daemon_pid)"
before=$(grep -c '"iSCSI session logged in"' "$LOG" || true)
reattached=$(grep -c '"device reattached"' "$LOG" || true)
start_daemon
# Kill it once it has logged in again but before it has handed the kernel new sockets.
n=0
while [ "$(grep -c '"iSCSI session logged in"' "$LOG" || true)" -le "$before" ]; do
  n=$((n + 1)); [ $n -lt 1200 ] || { echo "the daemon never logged in"; exit 1; }
  sleep 0.05
done
kill -9 "$(daemon_pid)"
[ "$(grep -c '"device reattached"' "$LOG" || true)" -le $((reattached + 1)) ]
echo "RESULT killed_mid_reattach 1"
sleep 1
start_daemon
wait_daemon
wait_writer 5
[ "$(io_errors)" = 0 ] || { dmesg | tail -n 30; exit 1; }

step "4. a 10 s outage of the target while mapped"
outage=$(now_cs)
hostcall outage 10
wait_writer 5
echo "RESULT outage_resume_cs $(( $(now_cs) - outage ))"
[ "$(io_errors)" = 0 ] || { dmesg | tail -n 30; exit 1; }

step "4b. the LUN grows on the target: resize, then resize2fs online while the writer runs"
d4k=${D4K#/dev/}
old_sectors=$(cat /sys/block/$d4k/size)
old_kb=$(df -k /mnt/b | awk 'NR == 2 { print $2 }')
# tgtd cannot resize a LUN: the host deletes it and adds it again over a bigger file.
# No I/O may run in that swap (the LUN is briefly not there), so the writer holds for it.
touch /tmp/writer.pause
n=0; until [ -e /tmp/writer.paused ]; do n=$((n + 1)); [ $n -lt 400 ] || { echo "writer did not pause"; exit 1; }; sleep 0.1; done
hostcall grow
rm -f /tmp/writer.pause
t0=$(now_cs)
$CLI resize "$D4K" --state-dir "$SD"
echo "RESULT resize_cs $(( $(now_cs) - t0 ))"
new_sectors=$(cat /sys/block/$d4k/size)
echo "$D4K: $old_sectors -> $new_sectors sectors"
[ "$new_sectors" -gt "$old_sectors" ] || { echo "the device did not grow"; exit 1; }
/usr/sbin/resize2fs "$D4K"
new_kb=$(df -k /mnt/b | awk 'NR == 2 { print $2 }')
echo "/mnt/b: $old_kb -> $new_kb KiB"
[ "$new_kb" -gt "$old_kb" ] || { echo "the filesystem did not grow"; exit 1; }
$CLI list-mapped --state-dir "$SD" | grep "$D4K " | grep -q " $((new_sectors * 512)) "
wait_writer 5
echo "RESULT resize_grew 1"
[ "$(io_errors)" = 0 ] || { dmesg | tail -n 30; exit 1; }

touch /tmp/writer.stop
wait $WRITER
echo "RESULT writer_rounds $(wc -l < /tmp/writer.log)"
echo "RESULT writer_failures $(wc -l < /tmp/writer.fail)"
# The longest gap between two finished rounds: the pause a writer saw.
echo "RESULT writer_max_gap_cs $(awk 'NR > 1 && $1 - p > m { m = $1 - p } { p = $1 } END { print m + 0 }' /tmp/writer.log)"
[ ! -s /tmp/writer.fail ] || { cat /tmp/writer.fail; exit 1; }
# Every file the writer finished holds what it wrote last.
for f in /mnt/b/w0 /mnt/b/w1 /mnt/b/w2 /mnt/b/w3 /mnt/b/w4 /mnt/b/w5; do
  want=$(grep " $f\$" /tmp/writer.md5 | tail -n 1 | cut -d' ' -f1)
  got=$(md5sum < $f | cut -d' ' -f1)
  [ "$want" = "$got" ] || { echo "$f: wrote $want, reads $got"; exit 1; }
done
md5sum -c /tmp/base.md5
umount /mnt/a
umount /mnt/b
fsck_ro "$D512"
fsck_ro "$D4K"
echo "RESULT fsck_clean 1"
echo "RESULT dmesg_io_errors $(io_errors)"
echo "RESULT dmesg_dead_conn $(dmesg | grep -c 'Dead connection' || true)"
echo "RESULT dmesg_reconnected $(dmesg | grep -c 'reconnected socket' || true)"
echo "RESULT dmesg_timed_out $(dmesg | grep -c 'timed out' || true)"

step "5. unmap: the device is gone and a restart does not map it again"
$CLI unmap "$D512" --state-dir "$SD"
d=${D512#/dev/}
[ "$(cat /sys/block/$d/size)" = 0 ] || { echo "$D512 still has a size after unmap"; exit 1; }
! $CLI list-mapped --state-dir "$SD" | grep -q "$D512 "
kill -TERM "$(daemon_pid)"
while kill -0 "$(daemon_pid)" 2> /dev/null; do sleep 0.5; done
start_daemon
wait_daemon
! $CLI list-mapped --state-dir "$SD" | grep -q "$D512 "
[ "$(cat /sys/block/$d/size)" = 0 ]
echo "RESULT unmap_stays 1"

step "6. the LUN is swapped for another while the daemon is down: reattach refused"
DSW=$($CLI map "$URLSWAP" --state-dir "$SD" --initiator-name "$INAME")
dd if=/dev/urandom of="$DSW" bs=4k count=16 conv=fsync 2> /dev/null
kill -TERM "$(daemon_pid)"
while kill -0 "$(daemon_pid)" 2> /dev/null; do sleep 0.5; done
hostcall swap
start_daemon
wait_daemon
$CLI list-mapped --state-dir "$SD" > /tmp/lm.txt
cat /tmp/lm.txt
grep "$DSW " /tmp/lm.txt | grep -q refused
grep -q 'refusing to reattach' "$LOG"
grep 'refusing to reattach' "$LOG" | tail -n 1
echo "RESULT swap_refused 1"
# The 4K device is still served after all this.
$CLI list-mapped --state-dir "$SD" | grep "$D4K " | grep -q attached
echo 3 > /proc/sys/vm/drop_caches
dd if="$D4K" of=/dev/null bs=4k count=256 2> /dev/null

step "7. four more LUNs of the same target, mapped by the same daemon: one pool, its sessions only"
# Established TCP connections to the target port (3260 = 0CBC), v4 and v6: the guest
# has no ss (no iproute2 in the image), /proc/net/tcp is always there.
conns_3260() {
  cat /proc/net/tcp /proc/net/tcp6 2> /dev/null | awk '$4 == "01" && $3 ~ /:0CBC$/ { n++ } END { print n + 0 }'
}
logins() { grep -c '"iSCSI session logged in"' "$LOG" || true; }
# RESULT lines about the target's pool in a status --json document:
#   <prefix>_pools (pools of IQN), <prefix>_luns (their LUNs, sorted), <prefix>_sessions,
#   <prefix>_sessions_up (logged in), <prefix>_maps_in_pool (mappings of DEV... naming that pool),
#   <prefix>_paths (each of those mappings' paths over the pool).
cat > /tmp/pool.js << 'EOF_JS'
const [file, prefix, iqn, ...devs] = process.argv.slice(2);
const s = JSON.parse(require('fs').readFileSync(file, 'utf8'));
const out = (k, v) => console.log(`RESULT ${prefix}_${k} ${v}`);
const pools = (s.targets || []).filter((t) => t.target === iqn);
out('pools', pools.length);
const p = pools[0] || { id: '-', luns: [], sessions: [] };
out('luns', [...p.luns].sort().join(',') || '-');
out('sessions', p.sessions.length);
out('sessions_up', p.sessions.filter((x) => x.state === 'logged-in').length);
const maps = (s.mappings || []).filter((m) => devs.includes(m.device));
out('maps_in_pool', maps.filter((m) => m.pool === p.id).length);
out('paths', maps.map((m) => (m.sessions || []).length).join(',') || '-');
console.log(`pool ${p.id}: LUNs ${p.luns.join(' ')}; sessions ${p.sessions.map((x) => x.index + ':' + x.state).join(' ')}`);
EOF_JS
echo "RESULT many_conns_before $(conns_3260)"
logins_before=$(logins)
t_step=$(now_cs)
MANY=""
for lun in 4 5 6 7; do
  d=$($CLI map "$URLMANY/$lun" --state-dir "$SD" --initiator-name "$INAME")
  echo "LUN $lun -> $d"
  MANY="$MANY $d"
done
echo "RESULT many_map_cs $(( $(now_cs) - t_step ))"
echo "RESULT many_logins $(( $(logins) - logins_before ))"
$CLI list-mapped --state-dir "$SD"
$CLI status --json > /tmp/status-many.json
$NODE /tmp/pool.js /tmp/status-many.json many "$IQN" $MANY
echo "RESULT many_conns $(conns_3260)"
# The target's side (tgtadm on the host): I_T nexuses (sessions) and connections of this initiator.
set -- $(hostcall nexus)
echo "RESULT many_target_sessions ${1:-?}"
echo "RESULT many_target_conns ${2:-?}"
# Distinct data on each, all four written at once, then all four read back at once (O_DIRECT
# both ways): commands of four LUNs interleave on the pool's sessions. (Wait for the dd's
# by pid: the daemon is a child of this shell too.)
i=0
for d in $MANY; do
  i=$((i + 1))
  dd if=/dev/urandom of=/tmp/many$i.pat bs=64k count=64 2> /dev/null
done
t_io=$(now_cs)
i=0; pids=""
for d in $MANY; do
  i=$((i + 1))
  dd if=/tmp/many$i.pat of="$d" bs=64k oflag=direct conv=fsync 2> /tmp/many$i.werr &
  pids="$pids $!"
done
for p in $pids; do wait "$p" || { echo "a dd to the devices failed"; cat /tmp/many*.werr; exit 1; }; done
echo 3 > /proc/sys/vm/drop_caches
i=0; pids=""
for d in $MANY; do
  i=$((i + 1))
  dd if="$d" of=/tmp/many$i.back bs=64k count=64 iflag=direct 2> /tmp/many$i.rerr &
  pids="$pids $!"
done
for p in $pids; do wait "$p" || { echo "a dd from the devices failed"; cat /tmp/many*.rerr; exit 1; }; done
echo "RESULT many_io_cs $(( $(now_cs) - t_io ))"
# Each device must read back its own data and no other device's (the host then checks
# that each LUN's backing file holds what was written to its device).
i=0; mixed=0; own=0
for d in $MANY; do
  i=$((i + 1))
  j=0
  for e in $MANY; do
    j=$((j + 1))
    [ $j != $i ] || continue
    if cmp -s /tmp/many$j.pat /tmp/many$i.back; then echo "$d reads what was written to $e"; mixed=$((mixed + 1)); fi
  done
  if cmp /tmp/many$i.pat /tmp/many$i.back; then own=$((own + 1)); else echo "$d does not read back what was written to it"; fi
  echo "RESULT many_md5_$i $(md5sum < /tmp/many$i.pat | cut -d' ' -f1)"
done
echo "RESULT many_mixed $mixed"
echo "RESULT many_own $own"
[ "$mixed" = 0 ] && [ "$own" = 4 ] || { cat /tmp/many*.werr /tmp/many*.rerr; exit 1; }
[ "$(io_errors)" = 0 ] || { dmesg | tail -n 30; exit 1; }
for d in $MANY; do $CLI unmap "$d" --state-dir "$SD"; done
for d in $MANY; do
  [ "$(cat /sys/block/${d#/dev/}/size)" = 0 ] || { echo "$d still has a size after unmap"; exit 1; }
done
$CLI status --json > /tmp/status-after.json
$NODE /tmp/pool.js /tmp/status-after.json unmapped "$IQN" $MANY
echo "RESULT unmapped_conns $(conns_3260)"
echo "RESULT many_step_cs $(( $(now_cs) - t_step ))"
echo "RESULT done 1"
