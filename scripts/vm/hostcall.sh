#!/bin/sh
# hostcall NAME [ARGS...] (guest side; installed as /usr/local/bin/hostcall by node-guest.ts)
# Asks the test on the host to run hostActions[NAME](ARGS) and waits for it, however long
# it takes (the runner bounds it). Prints the answer on stdout and exits 0; exits 1 with
# the reason on stderr when the action rejects (or is unknown); exits 2 when the host
# gave no answer at all.
#
# Protocol (one TCP connection per call, to $ng_host:$ng_hostcall_port, which the runner
# guestfwd's to its own server): the guest sends one line
#   HOSTCALL1 <b64 NAME> <b64 ARG>...      (an empty ARG is sent as "-")
# and the host answers one line, then closes:
#   OK <b64 answer>   or   ERR <b64 message>
# The guest must not half-close before the answer arrives (guestfwd.js exits 3 s after
# the guest's FIN), so busybox nc runs this same script with -e as the client: it writes
# the request, reads the answer line from the socket, then exits.
if [ "$1" = "--ng-client" ]; then
  printf '%s\n' "$HC_REQ"
  IFS= read -r resp
  printf '%s\n' "$resp" > "$HC_OUT"
  exit 0
fi
[ -r /etc/ng/env ] && . /etc/ng/env
if [ $# -lt 1 ]; then
  echo "usage: hostcall NAME [ARGS...]" >&2
  exit 2
fi
enc() {
  if [ -z "$1" ]; then printf '%s' -; else printf '%s' "$1" | base64 -w 0; fi
}
req=HOSTCALL1
for a in "$@"; do req="$req $(enc "$a")"; done
out=$(mktemp /tmp/hostcall.XXXXXX) || exit 2
HC_REQ="$req" HC_OUT="$out" nc "$ng_host" "$ng_hostcall_port" -e /usr/local/bin/hostcall --ng-client
resp=$(cat "$out")
rm -f "$out"
case "$resp" in
  "OK "*) printf '%s' "${resp#OK }" | base64 -d; exit 0 ;;
  "OK") exit 0 ;;
  "ERR "*) printf '%s' "${resp#ERR }" | base64 -d >&2; echo >&2; exit 1 ;;
  *) echo "hostcall $1: no answer from the host" >&2; exit 2 ;;
esac
