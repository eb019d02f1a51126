# Guest side of test/e2e/alua-lio.test.ts: runs as root inside the VM (busybox sh),
# where the kernel's own target (LIO) serves one fileio LUN through two TPGs, each in
# a target port group of its own (implicit ALUA), and our daemon maps it as /dev/nbd0
# with one session per TPG. Two writers write and read back with O_DIRECT while the
# groups' alua_access_state is switched twice; LIO's per-port command counts show
# where the I/O went. Environment: IQN (the target), INAME (our initiator name).
# Prints "RESULT key value" lines for the host.
set -eu

NODE=/usr/local/bin/node
CLI="$NODE /opt/iscsi-nbd/bin/iscsi-nbd.js"
SD=/tmp/state
LOG=/tmp/daemon.log
LUN_MB=64
SLOT_BLOCKS=4 # a slot is 4 blocks of 64 KiB
T=/sys/kernel/config/target
DEV=$T/core/fileio_0/disk0
GPS=$DEV/alua
TPG1=$T/iscsi/$IQN/tpgt_1
TPG2=$T/iscsi/$IQN/tpgt_2

now_cs() { cut -d' ' -f1 /proc/uptime | tr -d .; } # centiseconds since boot
step() { echo "== $*"; }
io_errors() { dmesg | grep -ciE 'I/O error|Buffer I/O|blk_update_request|critical .*error' || true; }

on_exit() {
  rc=$?
  touch /tmp/w.stop
  if [ $rc != 0 ]; then
    echo "--- daemon log (last lines)"
    tail -n 60 "$LOG" 2> /dev/null || true
    echo "--- daemon log: ALUA"
    grep -iE 'alua|TARGET PORT|unit attention|standby' "$LOG" | tail -n 60 || true
    echo "--- status"
    timeout 20 $CLI status --json 2>&1 | tr -d '\n' | head -c 6000; echo
    echo "--- LIO"
    for g in ctrl_a ctrl_b; do echo "$g: $(cat $GPS/$g/alua_access_state) $(cat $GPS/$g/alua_access_status)"; done
    sample
    echo "--- dmesg (last lines)"
    dmesg | tail -n 40
    echo "--- writers"
    tail -n 5 /tmp/w0.fail /tmp/w1.fail 2> /dev/null || true
  fi
}
trap on_exit EXIT

step "1. LIO through configfs: fileio backstore, two TPGs on loopback, two ALUA groups"
mount -t configfs none /sys/kernel/config
[ -d $T ] || { echo "no $T after loading target_core_mod"; exit 1; }
dd if=/dev/zero of=/tmp/lun.img bs=1M count=0 seek=$LUN_MB 2> /dev/null
mkdir -p $DEV
echo "fd_dev_name=/tmp/lun.img,fd_dev_size=$((LUN_MB << 20))" > $DEV/control
# Without a unit serial LIO lists no VPD page at all (no 0x83: no target port group).
# It can only be set while the device is not exported yet.
echo "alua-lio-0001" > $DEV/wwn/vpd_unit_serial
echo 1 > $DEV/enable
mkdir -p $T/iscsi/$IQN
for n in 1 2; do
  P=$T/iscsi/$IQN/tpgt_$n
  mkdir $P
  mkdir $P/lun/lun_0
  ln -s $DEV $P/lun/lun_0/disk0
  mkdir "$P/np/127.0.0.1:$((3259 + n))"
  # Demo mode: any initiator, no CHAP, writable.
  echo 1 > $P/attrib/generate_node_acls
  echo 1 > $P/attrib/cache_dynamic_acls
  echo 0 > $P/attrib/demo_mode_write_protect
  echo 0 > $P/attrib/authentication
  echo 1 > $P/enable
done
# Group A (id 16, TPG 1) active/optimized, group B (id 32, TPG 2) standby; implicit ALUA only.
mkdir $GPS/ctrl_a $GPS/ctrl_b
echo 16 > $GPS/ctrl_a/tg_pt_gp_id
echo 32 > $GPS/ctrl_b/tg_pt_gp_id
for g in ctrl_a ctrl_b; do echo 1 > $GPS/$g/alua_access_type; done
echo 0 > $GPS/ctrl_a/alua_access_state
echo 2 > $GPS/ctrl_b/alua_access_state
echo ctrl_a > $TPG1/lun/lun_0/alua_tg_pt_gp
echo ctrl_b > $TPG2/lun/lun_0/alua_tg_pt_gp
for g in ctrl_a ctrl_b; do
  echo "$g: id $(cat $GPS/$g/tg_pt_gp_id) state $(cat $GPS/$g/alua_access_state) type $(cat $GPS/$g/alua_access_type)"
done
cat $TPG1/lun/lun_0/alua_tg_pt_gp $TPG2/lun/lun_0/alua_tg_pt_gp | grep -v '^$' || true
ls $TPG1/lun/lun_0/statistics/scsi_tgt_port

# Per target port (TPG): SCSI commands received, MiB written and read (LIO counts a
# command when it looks up the LUN, before the ALUA check: refused ones count too).
st() { cat $1/lun/lun_0/statistics/scsi_tgt_port/$2; }
sample() { echo "$(st $TPG1 in_cmds) $(st $TPG1 write_mbytes) $(st $TPG1 read_mbytes) $(st $TPG2 in_cmds) $(st $TPG2 write_mbytes) $(st $TPG2 read_mbytes)"; }
# "name a_cmds a_wmb a_rmb b_cmds b_wmb b_rmb": the difference of two samples.
delta() { echo "$2 $3" | awk -v n="$1" '{ printf "%s %d %d %d %d %d %d\n", n, $7 - $1, $8 - $2, $9 - $3, $10 - $4, $11 - $5, $12 - $6 }'; }
echo "RESULT stats_setup $(sample)"

step "2. the daemon maps the LUN with a session to each TPG"
mkdir -p $SD
cat > /tmp/config.yaml << EOF
initiatorName: $INAME
stateDir: $SD
logLevel: ${LOG_LEVEL:-info}
listen: 127.0.0.1:10809
timeouts: {nopInterval: 5, nopTimeout: 10, replacement: 30}
exports:
  - name: lio
    url: iscsi://127.0.0.1:3260/$IQN/0
    portals: ["127.0.0.1:3261"]
    sessions: 2
devices:
  - {url: lio, device: /dev/nbd0}
EOF
t0=$(now_cs)
$CLI serve --config /tmp/config.yaml --log-format json > "$LOG" 2>&1 &
DAEMON=$!
n=0
until [ "$(cat /sys/block/nbd0/size)" -gt 0 ] 2> /dev/null; do
  n=$((n + 1)); [ $n -lt 360 ] || { echo "/dev/nbd0 was never mapped"; exit 1; }
  kill -0 $DAEMON 2> /dev/null || { echo "the daemon exited"; exit 1; }
  sleep 0.5
done
echo "RESULT map_cs $(( $(now_cs) - t0 ))"
echo "/dev/nbd0: $(cat /sys/block/nbd0/size) sectors"
echo "RESULT stats_mapped $(sample)"

step "3. two writers: write a slot with O_DIRECT, read it back, compare"
mkdir -p /tmp/pat
for k in 0 1 2 3 4 5; do
  dd if=/dev/urandom of=/tmp/pat/$k bs=64k count=$SLOT_BLOCKS 2> /dev/null
  md5sum < /tmp/pat/$k | cut -d' ' -f1 > /tmp/pat/$k.md5
done
# Data the writers never touch (8 MiB at 16 MiB), checked at the end.
dd if=/dev/urandom of=/tmp/base.bin bs=64k count=128 2> /dev/null
dd if=/tmp/base.bin of=/dev/nbd0 bs=64k seek=256 oflag=direct conv=notrunc 2> /dev/null
BASE_MD5=$(md5sum < /tmp/base.bin | cut -d' ' -f1)
rm -f /tmp/w.stop
for w in 0 1; do : > /tmp/w$w.log; : > /tmp/w$w.fail; : > /tmp/w$w.last; done
writer() { # writer W: slots 4W..4W+3; round r writes pattern (5r + W) mod 6 to slot 4W + r mod 4
  w=$1; r=0
  while [ ! -e /tmp/w.stop ]; do
    s=$((4 * w + r % 4)); k=$(((5 * r + w) % 6))
    if dd if=/tmp/pat/$k of=/dev/nbd0 bs=64k seek=$((s * SLOT_BLOCKS)) oflag=direct conv=notrunc 2> /tmp/w$w.err; then
      echo "$s $k" >> /tmp/w$w.last
      got=$(dd if=/dev/nbd0 bs=64k skip=$((s * SLOT_BLOCKS)) count=$SLOT_BLOCKS iflag=direct 2> /tmp/w$w.err | md5sum | cut -d' ' -f1)
      [ "$got" = "$(cat /tmp/pat/$k.md5)" ] || echo "round $r: slot $s reads back wrong ($(cat /tmp/w$w.err))" >> /tmp/w$w.fail
    else
      echo "round $r: write of slot $s failed: $(cat /tmp/w$w.err)" >> /tmp/w$w.fail
    fi
    now_cs >> /tmp/w$w.log
    r=$((r + 1))
  done
}
writer 0 &
W0=$!
writer 1 &
W1=$!
rounds() { echo $(( $(wc -l < /tmp/w0.log) + $(wc -l < /tmp/w1.log) )); }
wait_rounds() {
  want=$(( $(rounds) + $1 )); n=0
  while [ "$(rounds)" -lt "$want" ]; do
    n=$((n + 1)); [ $n -lt 600 ] || { echo "the writers made no progress"; exit 1; }
    sleep 0.1
  done
}
no_failures() { [ ! -s /tmp/w0.fail ] && [ ! -s /tmp/w1.fail ]; }
wait_rounds 10
no_failures

# A steady window: N seconds of writer I/O, no state change. Both ports taking commands
# in one is what the test refuses, so the daemon's lines of the window about paths,
# unit attentions and sessions go out with it ("WINLOG name ...").
window() {
  a=$(sample); r0=$(rounds); l0=$(wc -l < "$LOG")
  sleep "$2"
  d=$(delta "$3" "$a" "$(sample)")
  echo "RESULT win_$1 $d $(( $(rounds) - r0 ))"
  if echo "$d" | awk '{ exit !($2 > 0 && $5 > 0) }'; then
    tail -n +$((l0 + 1)) "$LOG" | grep -E 'ALUA|unit attention|session state|retrying' | cut -c1-600 | sed "s/^/WINLOG $1 /" | tail -n 60
  fi
}

# After a switch: NAME_cs is how long until the new optimized port has taken 50 commands,
# NAME_quiet_cs until the old one has taken none for 2 s, NAME_during what each got meanwhile.
follow() { # name, which port becomes optimized (1|2), switch time
  nm=$1; new=$2; t=$3; base=$(sample)
  n=0; got=''
  while :; do
    n=$((n + 1)); [ $n -lt 600 ] || { echo "$nm: I/O never moved to TPG $new"; sample; exit 1; }
    s=$(sample)
    d=$(echo "$base $s" | awk -v p="$new" '{ print (p == 1) ? $7 - $1 : $10 - $4 }')
    if [ -z "$got" ] && [ "$d" -ge 50 ]; then got=$(( $(now_cs) - t )); fi
    [ -n "$got" ] && break
    sleep 0.1
  done
  echo "RESULT ${nm}_cs $got"
  # The old port gets no more commands once the initiator has followed (bounded).
  old=$(echo "$s" | awk -v p="$new" '{ print (p == 1) ? $4 : $1 }')
  n=0
  while :; do
    sleep 2
    o=$(sample | awk -v p="$new" '{ print (p == 1) ? $4 : $1 }')
    [ "$o" = "$old" ] && break
    old=$o; n=$((n + 1)); [ $n -lt 15 ] || { echo "$nm: the old port keeps getting commands"; exit 1; }
  done
  echo "RESULT ${nm}_quiet_cs $(( $(now_cs) - t ))"
  echo "RESULT ${nm}_during $(delta x "$base" "$(sample)")"
}
status_json() { $CLI status --json | tr -d '\n'; }

step "4. group A optimized, B standby: where does the I/O go"
window a 8 steady
echo "RESULT status_a $(status_json)"
no_failures

# A switch while the writers run, then a steady window in the new states.
# switch_states NAME FIRST_GROUP FIRST_STATE SECOND_GROUP SECOND_STATE NEW_OPTIMIZED_PORT WINDOW
switch_states() {
  before=$(sample)
  t=$(now_cs)
  echo "$3" > $GPS/$2/alua_access_state
  echo "$5" > $GPS/$4/alua_access_state
  echo "$t" > /tmp/$1.at
  follow "$1" "$6" "$t"
  echo "RESULT $1_total $(delta x "$before" "$(sample)")"
  window "$7" 8 steady
  echo "RESULT status_$7 $(status_json)"
  no_failures
}

step "5. switch under I/O: A to standby first, then B to active/optimized"
switch_states switch1 ctrl_a 2 ctrl_b 0 2 b

step "6. and back: A to active/optimized first, then B to standby"
switch_states switch2 ctrl_a 0 ctrl_b 2 1 a2

step "7. stop the writers, verify everything"
touch /tmp/w.stop
wait $W0 $W1 || true
echo "RESULT rounds $(rounds)"
cat /tmp/w0.fail /tmp/w1.fail
echo "RESULT failures $(cat /tmp/w0.fail /tmp/w1.fail | wc -l)"
# Longest gap between two finished rounds of one writer (the pause it saw): overall,
# and for rounds that finished within 30 s of each switch.
max_gap() { cat /tmp/w0.log | awk -v from="$1" -v to="$2" 'NR > 1 && $1 >= from && $1 <= to && $1 - p > m { m = $1 - p } { p = $1 } END { print m + 0 }'
  cat /tmp/w1.log | awk -v from="$1" -v to="$2" 'NR > 1 && $1 >= from && $1 <= to && $1 - p > m { m = $1 - p } { p = $1 } END { print m + 0 }'; }
mx() { sort -n | tail -n 1; }
echo "RESULT max_gap_cs $(max_gap 0 999999999 | mx)"
for k in switch1 switch2; do
  at=$(cat /tmp/$k.at)
  echo "RESULT ${k}_gap_cs $(max_gap "$at" $((at + 3000)) | mx)"
done
echo "RESULT rounds_cs $(awk 'NR == 1 { f = $1 } { l = $1 } END { print l - f }' /tmp/w0.log)"
# Every slot holds what was written to it last, through the device and in LIO's backing file.
bad=0
for w in 0 1; do
  for s in $(awk '{ print $1 }' /tmp/w$w.last | sort -u); do
    k=$(awk -v s="$s" '$1 == s { k = $2 } END { print k }' /tmp/w$w.last)
    want=$(cat /tmp/pat/$k.md5)
    dev=$(dd if=/dev/nbd0 bs=64k skip=$((s * SLOT_BLOCKS)) count=$SLOT_BLOCKS iflag=direct 2> /dev/null | md5sum | cut -d' ' -f1)
    file=$(dd if=/tmp/lun.img bs=64k skip=$((s * SLOT_BLOCKS)) count=$SLOT_BLOCKS 2> /dev/null | md5sum | cut -d' ' -f1)
    [ "$dev" = "$want" ] && [ "$file" = "$want" ] || { echo "slot $s: want $want, device $dev, backing file $file"; bad=$((bad + 1)); }
  done
done
[ "$(dd if=/dev/nbd0 bs=64k skip=256 count=128 iflag=direct 2> /dev/null | md5sum | cut -d' ' -f1)" = "$BASE_MD5" ] || { echo "the untouched region changed (device)"; bad=$((bad + 1)); }
[ "$(dd if=/tmp/lun.img bs=64k skip=256 count=128 2> /dev/null | md5sum | cut -d' ' -f1)" = "$BASE_MD5" ] || { echo "the untouched region changed (backing file)"; bad=$((bad + 1)); }
echo "RESULT verify_bad $bad"
echo "RESULT dmesg_io_errors $(io_errors)"
dmesg | grep -iE 'nbd0|ALUA|iSCSI' | tail -n 20 || true
echo "RESULT alua_log $(grep -c '"path ALUA state"' "$LOG" || true)"
grep '"path ALUA state"' "$LOG" | tail -n 12 || true
echo "RESULT stats_end $(sample)"

step "8. idle: the groups switch while nothing writes; status follows with no I/O (the periodic read)"
# TPG 2's path (port 3261) becoming active/optimized in status is the sign.
tpg2_state() { status_json | $NODE -e '
  const st = JSON.parse(require("fs").readFileSync(0, "utf8"));
  const m = (st.mappings || []).find((x) => /(^|\/)nbd0$/.test(x.device));
  const p = ((m && m.sessions) || []).find((s) => /:3261(,\d+)?$/.test(s.portal || ""));
  process.stdout.write((p && p.alua && p.alua.state) || "none");'; }
idle_before=$(sample)
t=$(now_cs)
echo 2 > $GPS/ctrl_a/alua_access_state
echo 0 > $GPS/ctrl_b/alua_access_state
n=0
while [ "$(tpg2_state)" != "active/optimized" ]; do
  n=$((n + 1)); [ $n -lt 90 ] || { echo "idle: status never showed the switch"; break; }
  sleep 0.5
done
echo "RESULT idle_follow_cs $(( $(now_cs) - t ))"
echo "RESULT idle_during $(delta x "$idle_before" "$(sample)")"
echo "RESULT status_idle $(status_json)"
echo "RESULT done 1"
