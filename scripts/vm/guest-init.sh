#!/bin/sh
# /init of the e2e VM (busybox sh). Runs the steps in /steps.sh one by one, each in
# its own `sh -e` so any failing command fails the step, and prints on the console:
#   STEP name            when a step starts
#   PASS name            when it succeeded
#   FAIL name: detail    when it failed (then the run stops)
#   SUM file md5         checksums for the host-side check
#   DONE                 at the end, before poweroff
# Parameters come from /etc/vmt.env, added to the initramfs per run by run.ts.
/bin/busybox mkdir -p /proc /sys /dev /tmp /mnt /run
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
/bin/busybox --install -s
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root
set -a
. /etc/vmt.env
set +a
echo 4 > /proc/sys/kernel/printk

finish() {
  sync
  echo "DONE"
  poweroff -f
  sleep 30
}

for step in $vmt_steps; do
  echo "STEP $step"
  /bin/sh -ec ". /steps.sh; step_$(echo "$step" | tr - _)" > /tmp/step.log 2>&1
  rc=$?
  cat /tmp/step.log | sed 's/^/  | /'
  if [ $rc -eq 0 ]; then
    echo "PASS $step"
  else
    detail=$(tail -n 6 /tmp/step.log | tr '\n' ' ' | cut -c1-500)
    echo "FAIL $step: exit $rc: $detail"
    finish
  fi
done
finish
