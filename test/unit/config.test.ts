import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ConfigError, loadConfig } from '../../coordinator/config.ts';

const dir = mkdtempSync(join(tmpdir(), 'gantry-config-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function failure(env: Record<string, string>): string {
  try {
    loadConfig(env);
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return (err as Error).message;
  }
  throw new Error(`loadConfig accepted ${JSON.stringify(env)}`);
}

describe('loadConfig', () => {
  it('has defaults that run on a laptop: PGlite in ./.gantry on port 8080', () => {
    const c = loadConfig({});
    expect(c).toMatchObject({
      port: 8080,
      host: '0.0.0.0',
      databaseUrl: undefined,
      dataDir: './.gantry',
      publicUrl: 'http://localhost:8080',
      name: 'http://localhost:8080',
      tls: null,
      logRequests: true,
    });
  });

  it('reads every setting from the environment', () => {
    const c = loadConfig({
      PORT: '9000',
      HOST: '127.0.0.1',
      DATABASE_URL: 'postgres://u@db:5432/gantry',
      GANTRY_DATA_DIR: '/var/lib/gantry',
      GANTRY_DB_POOL_SIZE: '25',
      GANTRY_PUBLIC_URL: 'https://gantry.example.com/',
      GANTRY_NAME: 'gantry-prod',
      GANTRY_BODY_LIMIT_BYTES: '2048',
      GANTRY_LOG_REQUESTS: '0',
      GANTRY_SHUTDOWN_GRACE_MS: '500',
    });
    expect(c).toMatchObject({
      port: 9000,
      host: '127.0.0.1',
      databaseUrl: 'postgres://u@db:5432/gantry',
      dataDir: '/var/lib/gantry',
      dbPoolSize: 25,
      publicUrl: 'https://gantry.example.com',
      name: 'gantry-prod',
      bodyLimitBytes: 2048,
      logRequests: false,
      shutdownGraceMs: 500,
    });
  });

  it('names the coordinator after its public URL unless GANTRY_NAME says otherwise', () => {
    expect(loadConfig({ GANTRY_PUBLIC_URL: 'https://a.example' }).name).toBe('https://a.example');
    expect(loadConfig({ PORT: '9100' }).name).toBe('http://localhost:9100');
  });

  it('takes an empty variable as unset', () => {
    expect(loadConfig({ PORT: '', DATABASE_URL: '' })).toMatchObject({ port: 8080, databaseUrl: undefined });
  });

  it('serves HTTPS when both TLS files are given, and defaults the public URL to https', () => {
    const cert = join(dir, 'cert.pem');
    const key = join(dir, 'key.pem');
    writeFileSync(cert, 'x');
    writeFileSync(key, 'x');
    const c = loadConfig({ GANTRY_TLS_CERT: cert, GANTRY_TLS_KEY: key, PORT: '8443' });
    expect(c.tls).toEqual({ certFile: cert, keyFile: key });
    expect(c.publicUrl).toBe('https://localhost:8443');
  });

  it.each([
    [{ PORT: 'abc' }, 'invalid setting PORT="abc": must be a number'],
    [{ PORT: '70000' }, 'invalid setting PORT="70000": must be a port number, 0-65535'],
    [{ PORT: '80.5' }, 'invalid setting PORT="80.5": must be a whole number'],
    [{ GANTRY_DB_POOL_SIZE: '0' }, 'invalid setting GANTRY_DB_POOL_SIZE="0": must be 1 or more'],
    [{ GANTRY_LOG_REQUESTS: 'yes' }, 'invalid setting GANTRY_LOG_REQUESTS="yes": must be one of 1, 0, true, false'],
    [{ GANTRY_PUBLIC_URL: 'ftp://files.example' }, 'invalid setting GANTRY_PUBLIC_URL: must be an http:// or https:// URL'],
    [{ GANTRY_LEASE_TTL_SECONDS: '14' }, 'invalid setting GANTRY_LEASE_TTL_SECONDS="14": must be 15 or more (seconds)'],
  ])('stops on a bad value with one line naming the setting: %j', (env, message) => {
    expect(failure(env)).toBe(message);
  });

  it('never echoes a database URL, which may hold a password', () => {
    const message = failure({ DATABASE_URL: 'mysql://root:hunter2@db/gantry' });
    expect(message).toBe('invalid setting DATABASE_URL: must start with postgres://');
    expect(message).not.toContain('hunter2');
  });

  it('wants both TLS files or neither, and files that exist', () => {
    expect(failure({ GANTRY_TLS_CERT: '/etc/cert.pem' })).toMatch(/^invalid setting GANTRY_TLS_CERT.*set both or neither$/);
    const cert = join(dir, 'only-cert.pem');
    writeFileSync(cert, 'x');
    expect(failure({ GANTRY_TLS_CERT: cert, GANTRY_TLS_KEY: join(dir, 'missing.pem') })).toBe(
      'invalid setting GANTRY_TLS_KEY: no such file',
    );
  });

  it('gives every failure as one line', () => {
    for (const env of [{ PORT: 'abc' }, { GANTRY_PUBLIC_URL: 'nope' }, { GANTRY_BODY_LIMIT_BYTES: '-1' }] as Record<string, string>[]) {
      expect(failure(env)).not.toContain('\n');
    }
  });
});
