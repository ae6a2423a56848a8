// Decides whether the headless-browser tests of the dashboard run. A test file does:
//
//   import { requireChromiumOrSkip, chromiumPath, chromiumArgs } from '../support/chromium-env.ts';
//   const browser = await requireChromiumOrSkip();
//   describe.skipIf(!browser)('dashboard', () => { ... chromium.launch({ executablePath: chromiumPath, args: chromiumArgs }) ... });
//
// Without Chromium the tests are skipped with one warning line; with
// GANTRY_REQUIRE_CHROMIUM=1 (as .ci/run sets it) they fail instead. Debian's package
// `chromium` provides /usr/bin/chromium (.ci/docker-setup.sh installs it).
import { constants } from 'node:fs';
import { access, stat } from 'node:fs/promises';

/** The browser binary: CHROMIUM_PATH, else Debian's /usr/bin/chromium. */
export const chromiumPath: string = process.env.CHROMIUM_PATH || '/usr/bin/chromium';

/**
 * Flags for headless runs on this kind of machine: as root Chromium needs --no-sandbox, and
 * without the background-networking flags it keeps trying to reach hosts that the closed
 * network refuses. Pass a fresh --user-data-dir as well when launching it by hand.
 */
export const chromiumArgs: readonly string[] = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

export type ChromiumAvailability = { ok: true } | { ok: false; why: string };

/** Checks that the browser binary exists and is executable. */
export async function chromiumAvailable(): Promise<ChromiumAvailability> {
  try {
    const s = await stat(chromiumPath);
    if (!s.isFile()) return { ok: false, why: `${chromiumPath} is not a file` };
    await access(chromiumPath, constants.X_OK);
    return { ok: true };
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    const why = code === 'ENOENT' ? 'does not exist' : code === 'EACCES' ? 'is not executable' : String(e);
    return { ok: false, why: `${chromiumPath} ${why} (set CHROMIUM_PATH, or apt-get install chromium)` };
  }
}

/**
 * True when the browser tests can run. Otherwise: with GANTRY_REQUIRE_CHROMIUM=1 it throws
 * (CI fails, saying what is missing); without, it warns one line and returns false.
 */
export async function requireChromiumOrSkip(): Promise<boolean> {
  const result = await chromiumAvailable();
  if (result.ok) return true;
  if (process.env.GANTRY_REQUIRE_CHROMIUM === '1') {
    throw new Error(`GANTRY_REQUIRE_CHROMIUM=1 but browser tests cannot run: ${result.why}`);
  }
  console.warn(`chromium tests skipped: ${result.why}`);
  return false;
}
