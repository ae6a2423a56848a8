// drizzle-kit's input: every table of the coordinator, one entity per file.
export * from './accounts.ts';
export * from './jobs.ts';
export * from './nodes.ts';
export * from './leases.ts';
export * from './logs.ts';
export * from './pool.ts';
export * from './queue.ts';
export * from './services.ts';
export * from './ledger.ts';
