import { describe, expect, it } from 'vitest';
import { UsageError } from '../../../provider-agent/cli-args.ts';
import { allowedRegistriesOf, checkCoordinatorUrl, InsecureCoordinatorError, parseJoinArgs, parseRunArgs, parseServiceArgs } from '../../../provider-agent/config.ts';

describe('gantry-agent settings', () => {
  it('reads join flags, repeatable labels and prices', () => {
    const s = parseJoinArgs(
      ['--coordinator', 'https://gantry.example', '--token', 'gnt_x', '--label', 'rack=b7', '--label', 'tier=gold', '--price-gpu-hour', '1.25', '--run', '--state-dir', '/srv/agent'],
      {},
    );
    expect(s).toMatchObject({ coordinatorUrl: 'https://gantry.example', token: 'gnt_x', labels: { rack: 'b7', tier: 'gold' }, priceGpuHour: 1.25, run: true, stateDir: '/srv/agent', heartbeatSeconds: 5 });
  });

  it('takes the state dir from the flag, then GANTRY_AGENT_STATE_DIR, then the home dir', () => {
    expect(parseRunArgs(['--state-dir', '/a'], { GANTRY_AGENT_STATE_DIR: '/b' }).stateDir).toBe('/a');
    expect(parseRunArgs([], { GANTRY_AGENT_STATE_DIR: '/b' }).stateDir).toBe('/b');
    expect(parseRunArgs([], {}).stateDir).toMatch(/\.gantry-agent$/);
  });

  it('takes the registries from --allow-registry, then GANTRY_AGENT_ALLOWED_REGISTRIES, then the list given at join, then the public ones', () => {
    const run = (args: string[], env: Record<string, string> = {}) => parseRunArgs(args, env);
    expect(run(['--allow-registry', 'ghcr.io', '--allow-registry', '10.0.0.5:5000'], { GANTRY_AGENT_ALLOWED_REGISTRIES: 'quay.io' }).allowedRegistries).toEqual(['ghcr.io', '10.0.0.5:5000']);
    expect(run([], { GANTRY_AGENT_ALLOWED_REGISTRIES: 'quay.io, index.docker.io' }).allowedRegistries).toEqual(['quay.io', 'docker.io']);
    expect(allowedRegistriesOf(run([]), { allowedRegistries: ['nvcr.io'] })).toEqual(['nvcr.io']);
    expect(allowedRegistriesOf(run([]), null)).toEqual(['docker.io', 'ghcr.io', 'nvcr.io', 'quay.io', 'registry.k8s.io', 'public.ecr.aws']);
    expect(() => run(['--allow-registry', 'https://ghcr.io'])).toThrow(/^--allow-registry: a registry host/);
  });

  it('says which flag is wrong', () => {
    const cases: [string[], RegExp][] = [
      [['--token', 't'], /^--coordinator: is required/],
      [['--coordinator', 'ftp://x', '--token', 't'], /^--coordinator: must be an http/],
      [['--coordinator', 'https://x'], /^--token: is required/],
      [['--coordinator', 'https://x', '--token', 't', '--label', 'novalue'], /^--label: "novalue" is not key=value/],
      [['--coordinator', 'https://x', '--token', 't', '--price-gpu-hour', 'cheap'], /^--price-gpu-hour: must be a price/],
      [['--coordinator', 'https://x', '--token', 't', '--price-gpu-hour=-1'], /^--price-gpu-hour: Too small/],
      [['--coordinator', 'https://x', '--token', 't', '--heartbeat-seconds', '0'], /^--heartbeat-seconds:/],
      [['--bogus'], /Unknown option '--bogus'/],
    ];
    for (const [args, why] of cases) {
      const err = (() => {
        try {
          parseJoinArgs(args, {});
        } catch (e) {
          return e;
        }
        return null;
      })();
      expect(err, args.join(' ')).toBeInstanceOf(UsageError);
      expect((err as Error).message, args.join(' ')).toMatch(why);
    }
  });

  it('refuses plain http to another host unless told, and allows loopback', () => {
    for (const url of ['http://127.0.0.1:8080', 'http://localhost:8080', 'http://[::1]:8080', 'https://gantry.example']) {
      expect(() => checkCoordinatorUrl(url, false), url).not.toThrow();
    }
    for (const url of ['http://10.0.0.5:8080', 'http://gantry.example', 'http://127.0.0.1.nip.io']) {
      expect(() => checkCoordinatorUrl(url, false), url).toThrow(InsecureCoordinatorError);
      expect(() => checkCoordinatorUrl(url, true), url).not.toThrow();
    }
  });

  it('runs the service as the user who ran sudo', () => {
    expect(parseServiceArgs([], { SUDO_USER: 'ada' }).user).toBe('ada');
    expect(parseServiceArgs(['--user', 'grace'], { SUDO_USER: 'ada' }).user).toBe('grace');
    expect(parseServiceArgs(['--unit-path', '/tmp/x.service'], {}).unitPath).toBe('/tmp/x.service');
  });
});
