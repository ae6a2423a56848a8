#!/usr/bin/env node
// Runs the TypeScript entry point through tsx, so a clone needs no build step.
import { register } from 'tsx/esm/api';
register();
await import('../provider-agent/main.ts');
