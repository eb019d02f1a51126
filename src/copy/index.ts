// The copy engine (`iscsi-nbd copy`): public surface.
export { copy, checkTuning, CopyInterrupted, ShortSource, zeroRuns, forChunks, readOrZero, gcd, lcm, roundUp } from './copy';
export type { CopyOptions, CopySummary, CopyProgress } from './copy';
export { FileSide, LunSide, StreamSource, StreamSink, isUrl, isStream, pathKind, openLocalSource, openLocalDest } from './sides';
export type { Side, Extent, LunSideOptions, PathKind } from './sides';
export { detectImageFormat, notRawError, HEAD_BYTES, VHD_FOOTER_BYTES } from './format';
export type { ImageFormat } from './format';
export { servedByDaemon } from './served';
export type { ServedBy } from './served';
