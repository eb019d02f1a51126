// TLS fixtures for NBD tests (moved from test/nbd/util.ts).
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

/** A throwaway CA, server cert (localhost/127.0.0.1), client cert, and an untrusted self-signed client cert. */
export function makePki(dir: string): void {
  const o = (args: string[]) => execFileSync('openssl', args, { cwd: dir, stdio: 'ignore', timeout: 30000 });
  fs.writeFileSync(path.join(dir, 'srv.ext'), 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n');
  fs.writeFileSync(path.join(dir, 'cli.ext'), 'extendedKeyUsage=clientAuth\n');
  o(['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'ca-key.pem', '-out', 'ca-cert.pem', '-days', '2', '-subj', '/CN=nbd test CA']);
  o(['req', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'server-key.pem', '-out', 'server.csr', '-subj', '/CN=localhost']);
  o(['x509', '-req', '-in', 'server.csr', '-CA', 'ca-cert.pem', '-CAkey', 'ca-key.pem', '-CAcreateserial', '-out', 'server-cert.pem', '-days', '2', '-extfile', 'srv.ext']);
  o(['req', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'client-key.pem', '-out', 'client.csr', '-subj', '/CN=client']);
  o(['x509', '-req', '-in', 'client.csr', '-CA', 'ca-cert.pem', '-CAkey', 'ca-key.pem', '-CAcreateserial', '-out', 'client-cert.pem', '-days', '2', '-extfile', 'cli.ext']);
  // A client certificate from nobody we trust.
  o(['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'rogue-key.pem', '-out', 'rogue-cert.pem', '-days', '2', '-subj', '/CN=rogue', '-addext', 'extendedKeyUsage=clientAuth']);
  // libnbd's tls-certificates directory layouts.
  for (const [sub, cert, key] of [['good', 'client-cert.pem', 'client-key.pem'], ['rogue', 'rogue-cert.pem', 'rogue-key.pem']]) {
    fs.mkdirSync(path.join(dir, sub));
    fs.copyFileSync(path.join(dir, 'ca-cert.pem'), path.join(dir, sub, 'ca-cert.pem'));
    fs.copyFileSync(path.join(dir, cert), path.join(dir, sub, 'client-cert.pem'));
    fs.copyFileSync(path.join(dir, key), path.join(dir, sub, 'client-key.pem'));
  }
}
