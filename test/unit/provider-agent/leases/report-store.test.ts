import { mkdtemp, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ReportStore, type StoredReport } from '../../../../provider-agent/leases/report-store.ts';
import { newId } from '../../../../shared/ids.ts';

const stored = (over: Partial<StoredReport> = {}): StoredReport => ({
  jobId: newId('job'),
  epoch: 3,
  report: { epoch: 3, reason: 'succeeded', exitCode: 0, usage: { wallSeconds: 1.5 } },
  started: true,
  endedAt: '2026-12-07T20:00:00.000Z',
  ...over,
});

describe('ReportStore: finish reports kept in the state dir', () => {
  let root: string;
  let store: ReportStore;
  beforeEach(async () => {
    root = await mkdtemp(path.join(tmpdir(), 'gantry-reports-'));
    store = new ReportStore(path.join(root, 'state', 'reports'));
  });
  afterEach(() => rm(root, { recursive: true, force: true }));

  it('reads back what another store on the same folder saved (an agent restarted)', async () => {
    const a = stored();
    const b = stored({ epoch: 7, report: { epoch: 7, reason: 'nonzero-exit', exitCode: 2, error: 'exited with code 2' }, started: false });
    await store.save(a);
    await store.save(b);
    const again = new ReportStore(store.dir);
    const { reports, damaged } = await again.list();
    expect(damaged).toEqual([]);
    expect(reports.sort((x, y) => x.epoch - y.epoch)).toEqual([a, b]);
  });

  it('keeps each report readable by the agent user only, in a folder only it can enter', async () => {
    const a = stored();
    await store.save(a);
    expect((await stat(store.dir)).mode & 0o777).toBe(0o700);
    const [file] = await readdir(store.dir);
    expect((await stat(path.join(store.dir, file!))).mode & 0o777).toBe(0o600);
  });

  it('leaves no temp file behind and one file per job and epoch (a second save replaces the first)', async () => {
    const a = stored();
    await store.save(a);
    await store.save({ ...a, endedAt: '2026-12-07T21:00:00.000Z' });
    expect(await readdir(store.dir)).toEqual([`${a.jobId}.3.json`]);
    expect((await store.list()).reports).toEqual([{ ...a, endedAt: '2026-12-07T21:00:00.000Z' }]);
  });

  it('forgets a report once removed', async () => {
    const a = stored();
    const b = stored();
    await store.save(a);
    await store.save(b);
    await store.remove(a.jobId, a.epoch);
    expect((await store.list()).reports).toEqual([b]);
  });

  it('lists nothing when the folder does not exist yet', async () => {
    expect(await store.list()).toEqual({ reports: [], damaged: [] });
  });

  it('names what does not read back as a report: a torn write, bad JSON, a name that disagrees with its content', async () => {
    const good = stored();
    await store.save(good);
    const other = stored();
    await writeFile(path.join(store.dir, `${other.jobId}.3.json.123.1.tmp`), '{"jobId":');
    await writeFile(path.join(store.dir, `${other.jobId}.3.json`), '{"jobId":');
    await writeFile(path.join(store.dir, `${other.jobId}.4.json`), JSON.stringify(other));
    await writeFile(path.join(store.dir, 'notes.txt'), 'hello');
    const { reports, damaged } = await store.list();
    expect(reports).toEqual([good]);
    expect(damaged.sort()).toEqual([`${other.jobId}.3.json`, `${other.jobId}.3.json.123.1.tmp`, `${other.jobId}.4.json`, 'notes.txt'].sort());
    for (const name of damaged) await store.removeDamaged(name);
    expect(await readdir(store.dir)).toEqual([`${good.jobId}.3.json`]);
  });

  it('refuses to keep what is not a finish report', async () => {
    await expect(store.save({ ...stored(), report: { epoch: 3, reason: 'exploded' } } as never)).rejects.toThrow();
    await expect(store.save({ ...stored(), jobId: '../../key' })).rejects.toThrow();
  });
});
