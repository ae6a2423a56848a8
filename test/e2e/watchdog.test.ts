// The containers' watchdog (provider-agent/runtime/watchdog.ts) with the real engine: one process
// per agent guards every run's container from its deadline file, stops only those past their
// lease end, is kept (not doubled) by the next agent, and exits once its agent is gone and
// nothing is left to guard. The frozen-agent case end to end is in faults-agent.test.ts.
import { mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import Docker from 'dockerode';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { deadlineFileName, stoppedByWatchdog, Watchdog, type DeadlineFile } from '../../provider-agent/runtime/watchdog.ts';
import { dockerOptions, localTestImage, requireDockerOrSkip } from '../support/docker-env.ts';
import { until } from '../support/until.ts';

const docker = await requireDockerOrSkip();
const engine = new Docker(dockerOptions(30_000));

const running = (pid: number) => stat(`/proc/${pid}`).then(() => true, () => false);

describe.skipIf(!docker)('the container watchdog', () => {
  let work: string;
  const containers: Docker.Container[] = [];
  let watchdogPid = 0;

  beforeAll(async () => {
    work = await mkdtemp(path.join(tmpdir(), 'gantry-watchdog-e2e-'));
  });

  afterAll(async () => {
    for (const c of containers) await c.remove({ force: true }).catch(() => {});
    // Only the watchdog this test started, if it outlived the test.
    if (watchdogPid && (await running(watchdogPid))) process.kill(watchdogPid, 'SIGKILL');
    if (work) await rm(work, { recursive: true, force: true });
  });

  async function run(name: string, deadlineMs: number): Promise<Docker.Container> {
    const c = await engine.createContainer({ Image: localTestImage, Cmd: ['sleep', '600'], Labels: { 'io.gantry.test': 'watchdog' }, HostConfig: { NetworkMode: 'none' } });
    containers.push(c);
    await c.start();
    await mkdir(path.join(work, 'jobs', name), { recursive: true });
    const body: DeadlineFile = { deadlineMs, containerId: c.id };
    await writeFile(path.join(work, 'jobs', name, deadlineFileName), JSON.stringify(body));
    return c;
  }

  it('stops only the containers past their lease end, is shared by the next agent, and exits when its agent is gone', async () => {
    const past = await run('job_past.1', Date.now() - 1000);
    const ahead = await run('job_ahead.1', Date.now() + 600_000);
    await new Watchdog(work, 1, 0).ensure();
    watchdogPid = Number(await readFile(path.join(work, 'watchdog.pid'), 'utf8'));

    await until('the container past its lease end to stop', async () => !(await past.inspect()).State.Running, 30_000);
    await stat(path.join(work, 'jobs', 'job_past.1', stoppedByWatchdog));
    expect((await ahead.inspect()).State.Running).toBe(true);
    await expect(stat(path.join(work, 'jobs', 'job_ahead.1', stoppedByWatchdog))).rejects.toThrow();

    // The next agent keeps the watchdog that runs: no second process.
    await new Watchdog(work, 1, 0).ensure();
    expect(Number(await readFile(path.join(work, 'watchdog.pid'), 'utf8'))).toBe(watchdogPid);
    expect(await running(watchdogPid)).toBe(true);

    // Its agent gone (an owner that no longer runs) while a run is still guarded: it stays.
    await writeFile(path.join(work, 'watchdog.owner'), '2147483646');
    // A renewal it must read (the file is read every second): a deadline 2 s ahead is kept to.
    await writeFile(path.join(work, 'jobs', 'job_ahead.1', deadlineFileName), JSON.stringify({ deadlineMs: Date.now() + 2000, containerId: ahead.id } satisfies DeadlineFile));
    await until('the renewed container to stop at its new end', async () => !(await ahead.inspect()).State.Running, 30_000);
    // Nothing left to guard and no agent: it exits.
    await until('the watchdog to exit', async () => !(await running(watchdogPid)), 30_000);
  }, 90_000);
});
