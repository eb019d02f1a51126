// Public surface of the NBD server layer.
export { NbdServer } from './server';
export type {
  NbdServerOptions, NbdTlsOptions, NbdListenAddress, NbdConnectionState, NbdConnectionInfo, ExportRegistry, TlsMode,
} from './server';
export { HandshakeEngine } from './handshake';
export type { HandshakeOptions, HandshakeResult, HandshakeCallbacks } from './handshake';
export { TransmissionEngine, validateRequest } from './transmission';
export type { TransmissionOptions, TransmissionCallbacks } from './transmission';
export { resolveExport, effectiveBlockSizes, transmissionFlagsFor, DEFAULT_MAX_PAYLOAD } from './common';
