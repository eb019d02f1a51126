// A strict JSON parser for log lines: JSON.parse keeps the last of two equal
// keys without a word (and a reviver never sees the first), so this one reads
// the text itself and throws on a key repeated in the same object, at any
// depth. Small recursive descent over RFC 8259; the values it returns are the
// ones JSON.parse would return.

export class DuplicateKeyError extends Error {
  constructor(readonly key: string, readonly path: string, readonly offset: number) {
    super(`duplicate key ${JSON.stringify(key)} in ${path || 'the top-level object'} at offset ${offset}`);
    this.name = 'DuplicateKeyError';
  }
}

export function parseStrict(text: string): unknown {
  let i = 0;
  const fail = (what: string): never => {
    throw new SyntaxError(`${what} at offset ${i}: ${JSON.stringify(text.slice(Math.max(0, i - 20), i + 20))}`);
  };
  const ws = (): void => {
    while (i < text.length && (text[i] === ' ' || text[i] === '\t' || text[i] === '\n' || text[i] === '\r')) i++;
  };
  const string = (): string => {
    if (text[i] !== '"') fail('expected a string');
    const start = i;
    i++;
    while (i < text.length && text[i] !== '"') {
      if (text[i] === '\\') i++;
      else if (text.charCodeAt(i) < 0x20) fail('control character in a string');
      i++;
    }
    if (i >= text.length) fail('unterminated string');
    i++;
    return JSON.parse(text.slice(start, i)) as string; // escapes, checked by JSON.parse
  };
  const literal = (): unknown => {
    const m = /^(?:-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?|true|false|null)/.exec(text.slice(i, i + 400));
    if (!m) return fail('unexpected character');
    i += m[0].length;
    return JSON.parse(m[0]);
  };
  const value = (path: string): unknown => {
    ws();
    const c = text[i];
    if (c === '{') {
      i++;
      const out: Record<string, unknown> = {};
      const seen = new Set<string>();
      ws();
      if (text[i] === '}') {
        i++;
        return out;
      }
      for (;;) {
        ws();
        const at = i;
        const k = string();
        if (seen.has(k)) throw new DuplicateKeyError(k, path, at);
        seen.add(k);
        ws();
        if (text[i] !== ':') fail('expected ":"');
        i++;
        const v = value(path ? `${path}.${k}` : k);
        Object.defineProperty(out, k, { value: v, enumerable: true, writable: true, configurable: true });
        ws();
        if (text[i] === ',') {
          i++;
          continue;
        }
        if (text[i] === '}') {
          i++;
          return out;
        }
        fail('expected "," or "}"');
      }
    }
    if (c === '[') {
      i++;
      const out: unknown[] = [];
      ws();
      if (text[i] === ']') {
        i++;
        return out;
      }
      for (;;) {
        out.push(value(`${path}[${out.length}]`));
        ws();
        if (text[i] === ',') {
          i++;
          continue;
        }
        if (text[i] === ']') {
          i++;
          return out;
        }
        fail('expected "," or "]"');
      }
    }
    if (c === '"') return string();
    return literal();
  };
  const v = value('');
  ws();
  if (i !== text.length) fail('trailing text');
  return v;
}

export interface LogLine {
  level: number;
  time: number;
  msg?: string;
  [k: string]: unknown;
}

/**
 * Every non-empty line of `text` as a JSON object with unique keys; throws
 * naming the stream, the line number and the line itself otherwise.
 */
export function parseLogLines(text: string, stream: string): LogLine[] {
  const out: LogLine[] = [];
  const lines = text.split('\n');
  lines.forEach((line, n) => {
    if (line === '' && n === lines.length - 1) return; // after the final newline
    let v: unknown;
    try {
      v = parseStrict(line);
    } catch (err) {
      throw new Error(`${stream} line ${n + 1} is not a JSON object with unique keys: ${(err as Error).message}\n${line}`);
    }
    if (!v || typeof v !== 'object' || Array.isArray(v)) throw new Error(`${stream} line ${n + 1} is not a JSON object:\n${line}`);
    out.push(v as LogLine);
  });
  return out;
}
