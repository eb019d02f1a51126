// qemu's guestfwd=...-cmd: helper: qemu (slirp) starts one of these per guest
// connection with the connection on stdin/stdout; we splice it to 127.0.0.1:PORT.
// Usage: node guestfwd.js PORT [LOGFILE]
// Each connection appends one line to LOGFILE so the runner can count them.

import fs from 'node:fs';
import net from 'node:net';

const port = Number(process.argv[2]);
const logFile = process.argv[3];
if (!Number.isInteger(port) || port <= 0 || port > 65535) {
  process.stderr.write('usage: guestfwd PORT [LOGFILE]\n');
  process.exit(2);
}
const note = (s: string): void => {
  if (logFile) {
    try {
      fs.appendFileSync(logFile, `${new Date().toISOString()} ${process.pid} ${s}\n`);
    } catch {
      /* logging is best effort */
    }
  }
};

const sock = net.connect({ port, host: '127.0.0.1' });
sock.setNoDelay(true);
sock.on('connect', () => note('connect'));
sock.on('error', (err) => {
  note(`error ${err.message}`);
  process.exit(1);
});
process.stdin.on('error', () => sock.destroy());
process.stdout.on('error', () => sock.destroy());
process.stdin.pipe(sock);
sock.pipe(process.stdout);
sock.on('close', () => {
  note('close');
  process.exit(0);
});
// The guest (or qemu) went away: pass the FIN on, and do not linger if the server never closes.
process.stdin.on('end', () => {
  sock.end();
  setTimeout(() => process.exit(0), 3000).unref();
});
