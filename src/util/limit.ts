// Bounded concurrency: a fixed number of workers pulling from one source.

/**
 * Run fn over the items `next()` hands out, at most `limit` at a time (at
 * least one). `next()` returning undefined means no more items. After the
 * first error no new item is started; the ones in flight finish, then that
 * first error is thrown (onFail hears of it as soon as it happens). fn gets
 * the worker's slot (0 .. limit-1), for per-worker state such as buffers.
 */
export async function runLimited<T>(
  next: () => T | undefined,
  limit: number,
  fn: (item: T, slot: number) => Promise<void>,
  onFail?: (err: unknown) => void,
): Promise<void> {
  let failed = false;
  let err: unknown;
  const worker = async (slot: number): Promise<void> => {
    while (!failed) {
      const item = next();
      if (item === undefined) return;
      try {
        await fn(item, slot);
      } catch (e) {
        if (!failed) {
          failed = true;
          err = e;
          onFail?.(e);
        }
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, limit) }, (_, slot) => worker(slot)));
  if (failed) throw err;
}
