import { createRequire } from 'node:module';

/** Gantry's version, read from package.json: one number for the coordinator, the agent and the CLI. */
export const gantryVersion: string = (createRequire(import.meta.url)('../package.json') as { version: string }).version;
