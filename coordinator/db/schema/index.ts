// drizzle-kit's input: every table of the coordinator, one entity per file.
export * from './accounts.ts';
export * from './jobs.ts';
