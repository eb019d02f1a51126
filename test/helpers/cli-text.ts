// What a person reads of a command's stderr. Off a terminal, errors and
// warnings are JSON log lines (one format per stream, never mixed); tests that
// check the wording read them back in the terminal form:
//   {"level":50,"code":"ECONFIG","msg":"…"}  ->  iscsi-nbd: … [ECONFIG]
//   {"level":40,"msg":"…"}                   ->  iscsi-nbd: warning: …
// Other lines stay as they are.

export function userText(stderr: string): string {
  return stderr
    .split('\n')
    .map((line) => {
      if (!line.startsWith('{')) return line;
      let j: { level?: unknown; msg?: unknown; code?: unknown; help?: unknown };
      try {
        j = JSON.parse(line) as typeof j;
      } catch {
        return line;
      }
      if (typeof j.level !== 'number' || typeof j.msg !== 'string') return line;
      if (j.level >= 50) return `iscsi-nbd: ${j.msg}${typeof j.code === 'string' ? ` [${j.code}]` : ''}${typeof j.help === 'string' ? `\n${j.help}` : ''}`;
      if (j.level >= 40) return `iscsi-nbd: warning: ${j.msg}`;
      return line;
    })
    .join('\n');
}
