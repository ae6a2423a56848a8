import { describe, expect, it } from 'vitest';
import { cliSettings, resolveLogin } from '../../../cli/config.ts';

describe('the CLI settings', () => {
  it('reads the environment once, an empty variable as unset, a bad timeout as the default', () => {
    expect(cliSettings({ GANTRY_URL: 'http://127.0.0.1:1', GANTRY_API_KEY: '', GANTRY_TIMEOUT_MS: 'soon', GANTRY_DEBUG: '1' })).toEqual({
      url: 'http://127.0.0.1:1',
      apiKey: undefined,
      timeoutMs: 30_000,
      debug: true,
    });
    expect(cliSettings({ GANTRY_TIMEOUT_MS: '2500' })).toMatchObject({ timeoutMs: 2500, debug: false });
  });

  it('lets GANTRY_URL and GANTRY_API_KEY win over the stored login', async () => {
    const env = { HOME: '/nonexistent-gantry-home', GANTRY_URL: 'http://127.0.0.1:9/', GANTRY_API_KEY: 'gk_test' };
    expect(await resolveLogin(env)).toEqual({ coordinator: 'http://127.0.0.1:9', apiKey: 'gk_test', source: { coordinator: 'env', apiKey: 'env' } });
  });
});
