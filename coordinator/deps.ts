import type { KeyVerifier } from './auth/api-keys.ts';
import type { Clock } from './clock.ts';
import type { Config } from './config.ts';
import type { Database } from './db/open.ts';
import type { Logger } from './log.ts';
import type { Signals } from './signals.ts';

/** Everything the app is built from; production and tests pass the same shape to createApp. */
export interface AppDeps {
  config: Config;
  database: Database;
  clock: Clock;
  log: Logger;
  signals: Signals;
  keys: KeyVerifier;
}
