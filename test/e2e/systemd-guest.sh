#!/bin/bash
# Guest side of test/e2e/systemd.test.ts, installed as /usr/local/lib/iscsi-nbd-e2e/guest.sh.
# The host runs `. guest.sh; <function> ARGS` through the agent (bash, as root). Results
# are "R key value" lines; "K ..." lines are kernel messages a step added, "J {...}" lines
# journal entries (JSON). Everything else is for the log.
# `guest.sh writer` (run by systemd-run as the unit e2e-writer) is the writer loop.
set -u
E2E=/run/iscsi-nbd-e2e
W=$E2E/writer
mkdir -p "$E2E" "$W"

r() { echo "R $1 ${2:-}"; }
now() { echo "$EPOCHREALTIME"; }
dur() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
# die: a step cannot go on (the host fails the test with the output so far).
die() { echo "FAIL $*"; exit 1; }

mount_id() { awk -v m="$1" '$5 == m { id = $1 } END { print id + 0 }' /proc/self/mountinfo; }
prop() { systemctl show -P "$2" "$1"; }

# snap PREFIX MOUNTPOINT UNIT: how a mount looks (mount ID, unit state, when it became active).
snap() {
  r "$1_mount_id" "$(mount_id "$2")"
  r "$1_state" "$(prop "$3" ActiveState)"
  r "$1_enter_us" "$(prop "$3" ActiveEnterTimestampMonotonic)"
}

# unit_snap PREFIX UNIT: state and activation time of any unit.
unit_snap() {
  r "$1_state" "$(prop "$2" ActiveState)"
  r "$1_enter_us" "$(prop "$2" ActiveEnterTimestampMonotonic)"
}

io_error_re='I/O error|Buffer I/O|EXT4-fs error|JBD2: I/O|JBD2: Error|Remounting filesystem read-only|Aborting journal'

# --- boot -------------------------------------------------------------------

# boot_report MOUNT_UNIT...: waits for the boot to finish, then the figures of this boot.
boot_report() {
  systemctl is-system-running --wait > /dev/null 2>&1 || true
  r system_state "$(systemctl is-system-running 2>/dev/null)"
  r boot_id "$(cat /proc/sys/kernel/random/boot_id)"
  r uptime "$(cut -d' ' -f1 /proc/uptime)"
  r analyze "$(systemd-analyze time 2>/dev/null | head -n 1)"
  r daemon_start_us "$(prop iscsi-nbd.service ExecMainStartTimestampMonotonic)"
  r daemon_ready_us "$(prop iscsi-nbd.service ActiveEnterTimestampMonotonic)"
  r daemon_state "$(prop iscsi-nbd.service ActiveState)"
  r daemon_enabled "$(systemctl is-enabled iscsi-nbd.service 2>/dev/null)"
  for u in "$@"; do
    k=${u//[^a-zA-Z0-9]/_}
    r "${k}_state" "$(prop "$u" ActiveState)"
    r "${k}_enter_us" "$(prop "$u" ActiveEnterTimestampMonotonic)"
  done
  r nbd_loaded "$(grep -c '^nbd ' /proc/modules)"
  r failed_units "$(systemctl list-units --state=failed --no-legend --plain 2>/dev/null | awk '{ print $1 }' | tr '\n' ' ')"
  findmnt -n -o SOURCE,TARGET,FSTYPE,OPTIONS /srv/db || true
  iscsi-nbd list-mapped 2>&1 || true
  journalctl -b -u iscsi-nbd.service -o cat --no-pager 2>/dev/null | tail -n 8
}

# --- the writer ---------------------------------------------------------------

# writer: rotates 8 files of 64 KiB in /srv/db, each written with fsync and renamed into
# place, and keeps /srv/db/held.log open the whole time. One line per round in
# $W/rounds (the time it ended) and in $W/io (when its write+fsync began and ended), the
# checksum of each file it finished in $W/md5, failed calls in $W/fail. Stops when
# $W/stop appears.
writer() {
  : > "$W/rounds"
  : > "$W/io"
  : > "$W/md5"
  : > "$W/fail"
  rm -f "$W/stop"
  exec 4>> /srv/db/held.log
  i=0
  while [ ! -e "$W/stop" ]; do
    f=/srv/db/w$((i % 8))
    a=$EPOCHREALTIME
    dd if=/dev/urandom of="$f.tmp" bs=16k count=4 conv=fsync status=none
    rc=$?
    echo "$a $EPOCHREALTIME" >> "$W/io"
    if [ $rc = 0 ] && sum=$(md5sum < "$f.tmp") && mv "$f.tmp" "$f"; then
      echo "${sum%% *} $f" >> "$W/md5"
    else
      echo "round $i failed at $EPOCHREALTIME" >> "$W/fail"
    fi
    echo "$i $EPOCHREALTIME" >&4 || echo "round $i: held.log write failed" >> "$W/fail"
    echo "$EPOCHREALTIME" >> "$W/rounds"
    i=$((i + 1))
  done
  exec 4>&-
}

writer_start() {
  systemctl reset-failed e2e-writer.service 2> /dev/null || true
  rm -f "$W/stop"
  : > "$W/rounds"
  systemd-run --quiet --unit=e2e-writer --collect -p RequiresMountsFor=/srv/db /bin/bash /usr/local/lib/iscsi-nbd-e2e/guest.sh writer
  wait_rounds 10 120
  r writer_running "$(prop e2e-writer.service ActiveState)"
}

rounds() { wc -l < "$W/rounds" 2> /dev/null || echo 0; }

# wait_rounds N SECONDS: until the writer has finished N more rounds.
wait_rounds() {
  want=$(($(rounds) + $1))
  deadline=$((SECONDS + $2))
  while [ "$(rounds)" -lt "$want" ]; do
    [ $SECONDS -lt $deadline ] || { echo "the writer made no progress in $2 s ($(rounds)/$want rounds)"; return 1; }
    sleep 0.1
  done
}

writer_stop() {
  touch "$W/stop"
  n=0
  while [ "$(prop e2e-writer.service ActiveState)" = active ]; do
    n=$((n + 1))
    [ $n -lt 1200 ] || { systemctl kill e2e-writer.service; break; }
    sleep 0.1
  done
  r writer_rounds "$(rounds)"
  r writer_failures "$(wc -l < "$W/fail")"
}

# writer_verify: every file the writer finished holds what it wrote last, read from the
# device (caches dropped first).
writer_verify() {
  sync
  echo 3 > /proc/sys/vm/drop_caches
  bad=0
  for f in $(awk '{ print $2 }' "$W/md5" | sort -u); do
    want=$(grep " $f\$" "$W/md5" | tail -n 1 | cut -d' ' -f1)
    got=$(md5sum < "$f" | cut -d' ' -f1)
    [ "$want" = "$got" ] || { echo "$f: wrote $want, reads $got"; bad=$((bad + 1)); }
  done
  r writer_files_bad "$bad"
}

# --- a measured step ------------------------------------------------------------

# begin: marks the kernel log, the writer's rounds, the time and how the mount looks.
begin() {
  dmesg | wc -l > "$E2E/step.dmesg"
  now > "$E2E/step.t0"
  snap before /srv/db srv-db.mount
}

# end [ROUNDS]: (waits for ROUNDS more writer rounds,) then what the step changed:
# the kernel lines it added (nbd lines, I/O errors), the writer's longest pause between two
# rounds ending in the step, the mount's state.
end() {
  if [ "${1:-0}" -gt 0 ]; then wait_rounds "$1" 300 || r writer_stuck 1; fi
  t0=$(cat "$E2E/step.t0")
  t1=$(now)
  r step_s "$(dur "$t0" "$t1")"
  d0=$(cat "$E2E/step.dmesg")
  dmesg | tail -n +$((d0 + 1)) > "$E2E/step.kernel"
  r dmesg_lines "$(wc -l < "$E2E/step.kernel")"
  r dmesg_nbd_lines "$(grep -c 'nbd' "$E2E/step.kernel")"
  r dmesg_nbd0_lines "$(grep -c 'nbd0' "$E2E/step.kernel")"
  r dmesg_nbd1_lines "$(grep -c 'nbd1' "$E2E/step.kernel")"
  r dmesg_io_errors "$(grep -ciE "$io_error_re" "$E2E/step.kernel")"
  r dmesg_io_errors_nbd0 "$(grep -iE "$io_error_re" "$E2E/step.kernel" | grep -c 'nbd0')"
  head -n 60 "$E2E/step.kernel" | sed 's/^/K /'
  if [ -s "$W/io" ] && [ "$(prop e2e-writer.service ActiveState)" = active ]; then
    # The writer's longest pause: its longest write+fsync call that ended after the step
    # began (the time it was held up in I/O). Also the longest gap between two rounds, which
    # adds the round's own work (forks of dd, md5sum and mv: about a second under TCG).
    awk -v t0="$t0" '$2 >= t0 && $2 - $1 > m { m = $2 - $1 } END { printf "R writer_max_pause_s %.3f\n", m }' "$W/io"
    awk -v t0="$t0" '$2 < t0 { n++; s += $2 - $1 } END { if (n > 0) printf "R writer_io_s %.3f\n", s / n }' "$W/io"
    awk -v t0="$t0" 'NR > 1 && $1 >= t0 && $1 - p > m { m = $1 - p } { p = $1 } END { printf "R writer_max_gap_s %.3f\n", m }' "$W/rounds"
    awk -v t0="$t0" '$1 < t0 { n++; if (n > 1) { g = $1 - p; s += g } p = $1 } END { if (n > 1) printf "R writer_round_s %.3f\n", s / (n - 1) }' "$W/rounds"
    r writer_failures "$(wc -l < "$W/fail")"
  fi
  snap after /srv/db srv-db.mount
}

main_pid() { prop iscsi-nbd.service MainPID; }

# wait_daemon_back OLD_PID: until the unit is active again with another main PID.
wait_daemon_back() {
  deadline=$((SECONDS + 240))
  while :; do
    pid=$(main_pid)
    if [ "$(prop iscsi-nbd.service ActiveState)" = active ] && [ "$pid" != 0 ] && [ "$pid" != "$1" ]; then return 0; fi
    [ $SECONDS -lt $deadline ] || { echo "iscsi-nbd did not come back: $(systemctl status iscsi-nbd.service --no-pager 2>&1 | head -n 20)"; return 1; }
    sleep 0.1
  done
}

# step_restart [ROUNDS]: a restart; then ROUNDS more writer rounds (default 5; 0: no writer).
step_restart() {
  begin
  pid0=$(main_pid)
  a=$(now)
  systemctl restart iscsi-nbd.service
  r restart_rc $?
  b=$(now)
  r restart_s "$(dur "$a" "$b")"
  r pid_changed "$([ "$(main_pid)" != "$pid0" ] && echo 1 || echo 0)"
  end "${1:-5}"
}

step_kill9_writer() {
  begin
  pid0=$(main_pid)
  a=$(now)
  kill -9 "$pid0"
  wait_daemon_back "$pid0" || die "no daemon after kill -9"
  b=$(now)
  r back_s "$(dur "$a" "$b")"
  r nrestarts "$(prop iscsi-nbd.service NRestarts)"
  end 5
}

# step_kill9_idle: no writer; 1 MiB written without sync, kill -9 at once, then sync: the
# data must reach the LUN through the next daemon.
step_kill9_idle() {
  begin
  dd if=/dev/urandom of=/srv/db/unsynced bs=64k count=16 status=none
  want=$(md5sum < /srv/db/unsynced | cut -d' ' -f1)
  pid0=$(main_pid)
  a=$(now)
  kill -9 "$pid0"
  sync /srv/db/unsynced
  r sync_rc $?
  b=$(now)
  r sync_s "$(dur "$a" "$b")"
  wait_daemon_back "$pid0" || die "no daemon after kill -9"
  c=$(now)
  r back_s "$(dur "$a" "$c")"
  sync
  echo 3 > /proc/sys/vm/drop_caches
  got=$(md5sum < /srv/db/unsynced | cut -d' ' -f1)
  r unsynced_ok "$([ "$want" = "$got" ] && echo 1 || echo 0)"
  echo "unsynced: wrote $want, reads $got"
  end 0
}

step_stop_start() {
  begin
  a=$(now)
  systemctl stop iscsi-nbd.service
  r stop_rc $?
  b=$(now)
  r stop_s "$(dur "$a" "$b")"
  sleep 2
  c=$(now)
  systemctl start iscsi-nbd.service
  r start_rc $?
  d=$(now)
  r start_s "$(dur "$c" "$d")"
  r down_s "$(dur "$b" "$c")"
  end 5
}

# --- reboot ------------------------------------------------------------------------

# before_reboot FSTAB_LINE NBDTAB_LINE: the checksums of every file in /srv/db (on the root
# disk, for the next boot), then the nbd-client way set up for the next boot as README
# says: the nbdtab line and the fstab line. The host then reboots the guest.
before_reboot() {
  (cd /srv/db && find . -type f -print0 | sort -z | xargs -0 md5sum) > /var/lib/iscsi-nbd-e2e.md5
  r files "$(wc -l < /var/lib/iscsi-nbd-e2e.md5)"
  printf '%s\n' "$2" > /etc/nbdtab
  printf '%s\n' "$1" >> /etc/fstab
  mkdir -p /srv/scratch
  systemctl daemon-reload
  r scratch_unit "$(prop srv-scratch.mount LoadState)"
}

# after_reboot: the previous boot's shutdown (journal), the files, the new mounts.
after_reboot() {
  boot_report srv-db.mount srv-scratch.mount nbd@nbd1.service
  (cd /srv/db && md5sum -c --quiet /var/lib/iscsi-nbd-e2e.md5) > "$E2E/md5.out" 2>&1
  r files_rc $?
  head -n 20 "$E2E/md5.out"
  r files_checked "$(wc -l < /var/lib/iscsi-nbd-e2e.md5)"
  # systemd's job messages about these units in the previous boot, in order.
  journalctl -b -1 -o json --no-pager \
    UNIT=srv-db.mount UNIT=iscsi-nbd.service UNIT=srv-scratch.mount UNIT=nbd@nbd1.service \
    --output-fields=MESSAGE,UNIT,MESSAGE_ID,JOB_TYPE,JOB_RESULT,__MONOTONIC_TIMESTAMP 2>&1 | sed 's/^/J /'
  r journal_boots "$(journalctl --list-boots --no-pager 2>/dev/null | grep -cE '[0-9a-f]{32}')"
}

# probe PREFIX: a 256 KiB write with fsync to /srv/scratch (the nbd-client way's mount).
probe() {
  dd if=/dev/urandom of=/srv/scratch/probe bs=64k count=4 conv=fsync status=none
  r "$1_probe_rc" $?
}

# step_restart_both: a daemon restart with both ways' mounts in place (no writer), and a
# write to /srv/scratch before and after it.
step_restart_both() {
  probe before
  unit_snap before_scratch srv-scratch.mount
  unit_snap before_nbd1 nbd@nbd1.service
  r before_scratch_mount_id "$(mount_id /srv/scratch)"
  step_restart 0
  probe after
  unit_snap after_scratch srv-scratch.mount
  unit_snap after_nbd1 nbd@nbd1.service
  r after_scratch_mount_id "$(mount_id /srv/scratch)"
  d0=$(cat "$E2E/step.dmesg")
  r dmesg_io_errors_nbd1 "$(dmesg | tail -n +$((d0 + 1)) | grep -iE "$io_error_re" | grep -c 'nbd1')"
}

if [ "${BASH_SOURCE[0]}" = "$0" ] && [ "${1:-}" = writer ]; then
  writer
fi
