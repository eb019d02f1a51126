// The daemon's configuration: a YAML file validated against a JSON schema,
// then overridden by flags and environment variables. Errors name the key
// and the line so that a person can fix the file. schema.ts: types, schema,
// defaults; load.ts: reading and normalising; check.ts: what is checked
// before anything logs in.

export * from './schema';
export * from './load';
export * from './check';
