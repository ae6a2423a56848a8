import { readdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import { FinishReport, LeaseRef } from '../../shared/leases.ts';
import { writePrivateFile } from '../state.ts';

/** A run's end as the agent will report it, kept until the coordinator answers for good. */
export const StoredReport = LeaseRef.extend({
  report: FinishReport,
  /** The job's process started: its `running` report goes first, unless the coordinator took it already. */
  started: z.boolean(),
  /** When the run ended (agent's clock, ISO): for the log line of a late delivery. */
  endedAt: z.string(),
}).strict();
export type StoredReport = z.infer<typeof StoredReport>;

const fileName = /^(job_[A-Za-z0-9_-]+)\.(\d+)\.json$/;

/**
 * Finish reports on disk, one file per job and epoch in the state dir, so that a run that ended
 * while the coordinator was away is reported when it is back, even by a restarted agent. Each
 * file is written whole or not at all, readable by the agent's user only; it is removed once
 * the coordinator has taken the report or refused it for good.
 */
export class ReportStore {
  constructor(readonly dir: string) {}

  private file(jobId: string, epoch: number): string {
    return join(this.dir, `${jobId}.${epoch}.json`);
  }

  async save(stored: StoredReport): Promise<void> {
    const checked = StoredReport.parse(stored);
    await writePrivateFile(this.file(checked.jobId, checked.epoch), `${JSON.stringify(checked)}\n`);
  }

  /** Every report kept, and the names of files that are not one (damaged, or not ours). */
  async list(): Promise<{ reports: StoredReport[]; damaged: string[] }> {
    let names: string[];
    try {
      names = await readdir(this.dir);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { reports: [], damaged: [] };
      throw err;
    }
    const reports: StoredReport[] = [];
    const damaged: string[] = [];
    for (const name of names.sort()) {
      // A temp file left by a write that never finished: the report it held was never kept.
      if (name.endsWith('.tmp')) {
        damaged.push(name);
        continue;
      }
      const m = fileName.exec(name);
      const text = m ? await readFile(join(this.dir, name), 'utf8').catch(() => null) : null;
      const parsed = text === null ? null : StoredReport.safeParse(safeJson(text));
      if (!m || !parsed?.success || parsed.data.jobId !== m[1] || parsed.data.epoch !== Number(m[2])) {
        damaged.push(name);
        continue;
      }
      reports.push(parsed.data);
    }
    return { reports, damaged };
  }

  async remove(jobId: string, epoch: number): Promise<void> {
    await rm(this.file(jobId, epoch), { force: true });
  }

  /** Removes a file list() found damaged. */
  async removeDamaged(name: string): Promise<void> {
    await rm(join(this.dir, name), { force: true });
  }
}

function safeJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}
