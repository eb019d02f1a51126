// 32-bit serial number arithmetic (RFC 1982, used by RFC 7143 for CmdSN,
// StatSN, DataSN, R2TSN): comparisons are modulo 2^32 within a half window.

export function snAdd(a: number, n: number): number {
  return (a + n) >>> 0;
}

/** a - b as a signed distance (positive when a is "after" b). */
export function snDiff(a: number, b: number): number {
  return ((a - b) | 0);
}

export function snLt(a: number, b: number): boolean {
  return a !== b && snDiff(a, b) < 0;
}

export function snGt(a: number, b: number): boolean {
  return a !== b && snDiff(a, b) > 0;
}

export function snLte(a: number, b: number): boolean {
  return a === b || snDiff(a, b) < 0;
}

export function snGte(a: number, b: number): boolean {
  return a === b || snDiff(a, b) > 0;
}
