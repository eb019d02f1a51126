// The embedded iSCSI target: public surface.
export { TargetServer } from './server';
export type { TargetServerOptions, TargetConfig, LunConfig } from './server';
export { TargetConnectionEngine, DEFAULT_TARGET_LIMITS } from './engine';
export type { ChapConfig, EngineIo, EngineOptions, EngineState, TargetEntry, TargetLimits, SessionInfo } from './engine';
export { MemoryBackend, FileBackend, GranuleSet, parseSize, BLOCK_SIZES } from './backend';
export type { LunBackend, Extent, MemoryBackendOptions, FileBackendOptions } from './backend';
export { FaultController, seededRandom } from './faults';
export type { FaultSpec, StatusFault, MediumErrorRange, MalformedKind, InjectedStatus } from './faults';
export { ScsiDevice, LogicalUnits, fixedSense, checkCondition, identityFromSeed, VENDOR_ID, PRODUCT_ID, MAX_TRANSFER_BYTES } from './scsi-device';
export type { ScsiResult, DeviceIdentity } from './scsi-device';
