import { readdirSync, readFileSync } from 'node:fs';
import { join, relative, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { agentVersion } from '../../provider-agent/join.ts';
import { gantryVersion } from '../../shared/version.ts';

const root = resolve(import.meta.dirname, '../..');
const packageVersion = (JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { version: string }).version;

function sources(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const path = join(dir, e.name);
    if (e.isDirectory()) return e.name === 'node_modules' ? [] : sources(path);
    return /\.(ts|tsx|js)$/.test(e.name) ? [path] : [];
  });
}

describe('the version', () => {
  it('is read from package.json by every part', () => {
    expect(gantryVersion).toBe(packageVersion);
    expect(agentVersion).toBe(packageVersion);
  });

  it('is written as a literal nowhere in the code, so a release bumps one file', () => {
    const literal = new RegExp(`['"\`]v?${packageVersion.replace(/\./g, '\\.')}['"\`]`);
    const found = ['coordinator', 'provider-agent', 'cli', 'shared', 'bin']
      .flatMap((d) => sources(join(root, d)))
      .filter((f) => literal.test(readFileSync(f, 'utf8')))
      .map((f) => relative(root, f));
    expect(found).toEqual([]);
  });
});
