import { spawn } from 'node:child_process';
import { repoRoot } from './coordinator-process.ts';

export interface CliRun {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** gantry ARGS as its own process; env replaces GANTRY_* and HOME for this run. */
export function startCli(args: string[], env: Record<string, string>, stdin?: string) {
  const clean: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) if (v !== undefined && !k.startsWith('GANTRY_') && k !== 'NO_COLOR') clean[k] = v;
  const child = spawn(process.execPath, ['--import', 'tsx', 'cli/main.ts', ...args], {
    cwd: repoRoot,
    env: { ...clean, ...env },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
  child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
  child.stdin.end(stdin ?? '');
  const done = new Promise<CliRun>((resolve) => child.on('close', (code) => resolve({ code, stdout, stderr })));
  return { child, done, output: () => ({ stdout, stderr }) };
}
