// Secrets never reach a log line: URL passwords in messages, fields, errors and
// child bindings; structured secret fields.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createLogger, redactText, redactUrl } from '../../src/log';

test('redactText scrubs iscsi:// passwords and target_password anywhere in a string', () => {
  assert.equal(redactText('iscsi://u%pw@h/iqn.x:y/0'), 'iscsi://u%[redacted]@h/iqn.x:y/0');
  assert.equal(redactText('iscsi://u:pw@h:3260/iqn.x:y/0'), 'iscsi://u%[redacted]@h:3260/iqn.x:y/0');
  assert.equal(redactText('login to ISCSI://u%p%40ss@h failed'), 'login to ISCSI://u%[redacted]@h failed');
  assert.equal(redactText('iscsi://u%p@h/t/0?target_user=t&target_password=tp2'), 'iscsi://u%[redacted]@h/t/0?target_user=t&target_password=[redacted]');
  assert.equal(redactText('iscsi://h:3260/iqn.2000-01.x:y/0'), 'iscsi://h:3260/iqn.2000-01.x:y/0');
  assert.equal(redactText('plain text'), 'plain text');
  assert.equal(redactUrl('iscsi://u%pw@h'), 'iscsi://u%[redacted]@h');
});

test('the logger scrubs messages, fields, nested fields, errors and bindings', () => {
  const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'log-test-')), 'log.json');
  const log = createLogger({ level: 'debug', pretty: false, destination: file });
  const url = 'iscsi://alice%Sup3rSecretA@10.0.0.1/iqn.2000-01.x:y/1?target_user=t&target_password=Sup3rSecretB';
  const child = log.child({ url, conn: 1 });
  child.info(`opening ${url}`);
  child.debug({ spec: { name: 'a', url }, chap: { user: 'alice', secret: 'Sup3rSecretC' } }, 'export spec');
  child.warn({ err: new Error(`cannot log in to ${url}`) }, 'failed');
  child.info({ password: 'Sup3rSecretD', auth: { user: 'x', password: 'Sup3rSecretE' } }, 'fields');
  child.info('printf %s', url);
  const text = fs.readFileSync(file, 'utf8');
  fs.rmSync(path.dirname(file), { recursive: true, force: true });
  const lines = text.trim().split('\n');
  assert.equal(lines.length, 5, text);
  for (const s of ['Sup3rSecretA', 'Sup3rSecretB', 'Sup3rSecretC', 'Sup3rSecretD', 'Sup3rSecretE']) {
    assert.ok(!text.includes(s), `${s} leaked:\n${text}`);
  }
  assert.match(text, /alice%\[redacted\]@10\.0\.0\.1/);
  for (const l of lines) JSON.parse(l); // still JSON
  assert.equal(JSON.parse(lines[2]).err.type, 'Error');
});
