// Moved: the process/CLI helpers live in test/helpers/process.ts. This
// re-export keeps test/logs/* (not yet switched over) compiling.
export * from '../helpers/process';
