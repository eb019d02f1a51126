// Type guards for values read from a config file (internal to config/).

export const isStr = (v: unknown): v is string => typeof v === 'string';
export const isObj = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
