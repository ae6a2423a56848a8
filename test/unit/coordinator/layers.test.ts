import { readdirSync, readFileSync } from 'node:fs';
import { join, relative, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';

// The domain never imports the HTTP layer: errors live in coordinator/errors.ts, and only
// coordinator/http turns them into statuses. coordinator/app.ts is the one place that mounts the
// HTTP layer (the composition root), so it alone may import it.
const root = resolve(import.meta.dirname, '../../..');
const coordinator = join(root, 'coordinator');
const http = join(coordinator, 'http');
const compositionRoot = join(coordinator, 'app.ts');

function sources(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const path = join(dir, e.name);
    if (e.isDirectory()) return e.name === 'node_modules' ? [] : sources(path);
    return /\.(ts|tsx)$/.test(e.name) ? [path] : [];
  });
}

/** Every module a file names in an import or export ... from, or a dynamic import(). */
function importedPaths(file: string): string[] {
  const text = readFileSync(file, 'utf8');
  const specifiers = [...text.matchAll(/(?:^|\n)\s*(?:import|export)\b[^'"`;]*?from\s*['"]([^'"]+)['"]|import\(\s*['"]([^'"]+)['"]\s*\)/g)].map((m) => m[1] ?? m[2]!);
  return specifiers.filter((s) => s.startsWith('.')).map((s) => resolve(file, '..', s));
}

describe('coordinator layers', () => {
  it('has no file outside coordinator/http (but the composition root) importing from coordinator/http', () => {
    const offenders = sources(coordinator)
      .filter((f) => !f.startsWith(http + '/') && f !== compositionRoot)
      .flatMap((f) => importedPaths(f).filter((p) => p === http || p.startsWith(http + '/')).map((p) => `${relative(root, f)} imports ${relative(root, p)}`));
    expect(offenders).toEqual([]);
  });

  it('reads the import lines it checks', () => {
    // The check above is only as good as its reader: it must see the composition root's imports.
    expect(importedPaths(compositionRoot).some((p) => p.startsWith(http + '/'))).toBe(true);
  });
});
