// postgres.js 3.4.9 with a guard on its write path, loaded from our own code so that every
// process that opens PostgreSQL through here gets it (no install step, no process-wide hook).
//
// The defect (porsager/postgres#1208, fix PR #1209 still open; #1066, #1154): when the server
// goes away, connection.js sets `socket = null` and reconnects only later, yet a query can still be
// written to that connection (a reserved one, a transaction's ROLLBACK, a slot released after its
// close). The small-write path defers `socket.write` to a setImmediate, which throws a TypeError
// nothing can catch, and the process exits. Its teardown also cancels a pending immediate without
// forgetting it, so a closed connection never schedules a write again and its next query hangs
// (LanternOps/breeze#3225). The patch below settles such a write as CONNECTION_CLOSED (the caller
// gets a rejection it can handle), returns a pool slot that was handed out after its close to the
// closed queue (so it reconnects), and forgets the pending write and the dead session's last
// error on teardown.
import { readFileSync } from 'node:fs';
import { createRequire, Module } from 'node:module';
import path from 'node:path';
import type Postgres from 'postgres';

const require = createRequire(import.meta.url);
const driverVersion = '3.4.9';

/** Each edit: the text 3.4.9 has, and what it becomes. A driver that lacks one is refused. */
const edits: [string, string][] = [
  [
    'function nextWrite(fn) {\n    const x = socket.write(chunk, fn)',
    'function nextWrite(fn) {\n    if (!socket)\n      return writeAfterClose()\n    const x = socket.write(chunk, fn)',
  ],
  [
    '  function connectTimedOut() {',
    `  function writeAfterClose() {
    chunk = nextWriteTimer = null
    const pooled = connection.queue === queues.open || connection.queue === queues.busy || connection.queue === queues.full
    const err = Errors.connection('CONNECTION_CLOSED', options)
    error(err)
    pooled && onclose(connection, err)
    return true
  }

  function connectTimedOut() {`,
  ],
  [
    "    clearImmediate(nextWriteTimer)\n    if (socket) {",
    "    clearImmediate(nextWriteTimer)\n    chunk = nextWriteTimer = null\n    if (socket) {",
  ],
  [
    '    incomings = null\n    clearImmediate(nextWriteTimer)\n',
    // An error the dead session sent for its last query must not fail the first one of the next.
    '    incomings = null\n    clearImmediate(nextWriteTimer)\n    chunk = nextWriteTimer = null\n    errorResponse = null\n',
  ],
  ['module.exports = Connection', 'module.exports = Connection\nConnection.gantryWriteGuard = true'],
];

export function guardConnectionSource(source: string): string {
  let out = source;
  for (const [from, to] of edits) {
    if (out.split(from).length !== 2) {
      throw new Error(`postgres.js is not the ${driverVersion} that coordinator/db/postgres-driver.ts patches (no unique "${from.split('\n')[0]!.trim()}"): check porsager/postgres#1208 and update the guard`);
    }
    out = out.replace(from, to);
  }
  return out;
}

function loadGuarded(): typeof Postgres {
  const indexPath = require.resolve('postgres');
  const pkg = JSON.parse(readFileSync(path.join(indexPath, '../../../package.json'), 'utf8')) as { version: string };
  if (pkg.version !== driverVersion) {
    throw new Error(`postgres.js ${pkg.version} is installed; coordinator/db/postgres-driver.ts guards ${driverVersion}: check porsager/postgres#1208 and update the guard`);
  }
  const connectionPath = path.join(path.dirname(indexPath), 'connection.js');
  // The driver's index requires ./connection.js: put the guarded module in the cache first.
  if (!require.cache[connectionPath]) {
    const mod = new Module(connectionPath);
    mod.filename = connectionPath;
    mod.paths = (Module as unknown as { _nodeModulePaths(dir: string): string[] })._nodeModulePaths(path.dirname(connectionPath));
    (mod as unknown as { _compile(code: string, file: string): void })._compile(guardConnectionSource(readFileSync(connectionPath, 'utf8')), connectionPath);
    mod.loaded = true;
    require.cache[connectionPath] = mod;
  }
  if (!(require.cache[connectionPath]!.exports as { gantryWriteGuard?: boolean }).gantryWriteGuard) {
    throw new Error('postgres.js was loaded before coordinator/db/postgres-driver.ts could guard it');
  }
  return require('postgres') as typeof Postgres;
}

/** The postgres.js client factory, guarded: what every PostgreSQL connection of ours is made with. */
export const postgres: typeof Postgres = loadGuarded();
