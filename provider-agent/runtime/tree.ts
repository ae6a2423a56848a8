import { execFile } from 'node:child_process';
import { rm } from 'node:fs/promises';
import { promisify } from 'node:util';

const run = promisify(execFile);

/**
 * Removes a folder however deep or long-named what a job wrote in it is: Node's fs.rm builds
 * whole paths and fails with ENAMETOOLONG past PATH_MAX, where rm(1) walks relative to each
 * folder (openat). Throws when neither could, e.g. files another user owns.
 */
export async function removeTree(dir: string): Promise<void> {
  try {
    await rm(dir, { recursive: true, force: true });
    return;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENAMETOOLONG') throw err;
  }
  await run('rm', ['-rf', '--one-file-system', '--', dir], { timeout: 600_000 }).catch((err: { stderr?: string; message: string }) => {
    throw new Error(`rm -rf failed: ${(err.stderr || err.message).trim().split('\n').pop()}`);
  });
}
