import { and, eq, sql } from 'drizzle-orm';
import type { JobSpec } from '../../shared/jobs.ts';
import type { Db, DbOrTx } from '../db/open.ts';
import { blobs, jobOutputs, jobs } from '../db/schema/index.ts';
import { ApiError, notFound } from '../errors.ts';
import { specOf } from '../jobs/arrays.ts';
import { getOwnJob } from '../jobs/lifecycle.ts';
import { requireLiveLease } from '../logs/lease.ts';
import type { BlobStore } from './store.ts';

export interface BlobDeps {
  db: Db;
  blobs: BlobStore;
}

/** Stores an upload and records the account as an owner of its digest. */
export async function uploadBlob(
  deps: BlobDeps,
  accountId: string,
  body: AsyncIterable<Uint8Array>,
  maxBytes: number,
): Promise<{ digest: string; size: number }> {
  const stored = await deps.blobs.put(body, maxBytes);
  await recordOwner(deps.db, stored.digest, accountId, stored.size);
  return stored;
}

async function recordOwner(db: DbOrTx, digest: string, accountId: string, size: number) {
  await db.insert(blobs).values({ digest, accountId, size }).onConflictDoNothing();
}

async function openStored(deps: BlobDeps, digest: string): Promise<AsyncIterable<Uint8Array>> {
  const body = await deps.blobs.open(digest);
  if (!body) throw notFound('blob');
  return body;
}

/** A blob its owner reads back; anyone else's is not found. */
export async function openOwnBlob(deps: BlobDeps, accountId: string, digest: string) {
  const [row] = await deps.db
    .select({ size: blobs.size })
    .from(blobs)
    .where(and(eq(blobs.digest, digest), eq(blobs.accountId, accountId)));
  if (!row) throw notFound('blob');
  return { size: row.size, body: await openStored(deps, digest) };
}

/**
 * An input as the node running the job reads it: only while the node holds the job at this
 * epoch, only a digest the job's spec names, and only one the job's owner uploaded (naming a
 * digest in a spec proves nothing about having its bytes).
 */
export async function openJobInput(deps: BlobDeps, nodeId: string, jobId: string, epoch: number, digest: string) {
  const job = await requireLiveLease(deps.db, jobId, nodeId, epoch);
  if (!(await specOf(deps.db, job)).inputs?.some((i) => i.digest === digest)) throw notFound('input');
  const [row] = await deps.db
    .select({ size: blobs.size })
    .from(blobs)
    .where(and(eq(blobs.digest, digest), eq(blobs.accountId, job.accountId)));
  if (!row) throw notFound('input');
  return { size: row.size, body: await openStored(deps, digest) };
}

/** Digests a job names that its owner has not uploaded: a spec naming them cannot run. */
export async function missingInputs(db: DbOrTx, accountId: string, digests: readonly string[]): Promise<string[]> {
  if (!digests.length) return [];
  const rows = await db
    .select({ digest: blobs.digest })
    .from(blobs)
    .where(and(eq(blobs.accountId, accountId), sql`${blobs.digest} in ${[...new Set(digests)]}`));
  const have = new Set(rows.map((r) => r.digest));
  return digests.filter((d) => !have.has(d));
}

/** Refuses a job spec naming an input its owner has not uploaded (POST /v1/blobs first). */
export async function requireInputsUploaded(db: DbOrTx, accountId: string, inputs: JobSpec['inputs']) {
  // Each digest with where the spec names it (an array's per-task inputs name one per task).
  const named = (inputs ?? []).flatMap((input, i) =>
    input.perTask ? input.perTask.map((d, t) => ({ d, path: `inputs.${i}.perTask.${t}` })) : [{ d: input.digest!, path: `inputs.${i}.digest` }],
  );
  const missing = new Set(await missingInputs(db, accountId, named.map((n) => n.d)));
  if (!missing.size) return;
  const errors = named.flatMap((n) => (missing.has(n.d) ? [{ path: n.path, message: 'no blob of yours has this digest: upload it with POST /v1/blobs first' }] : [])).slice(0, 20);
  throw new ApiError('validation', `${errors[0]!.path}: ${errors[0]!.message}`, errors);
}

/** The agent's tar of /outputs: stored as a blob of the job's owner and named on the job. */
export async function storeJobOutputs(
  deps: BlobDeps,
  nodeId: string,
  jobId: string,
  epoch: number,
  body: AsyncIterable<Uint8Array>,
  maxBytes: number,
): Promise<{ digest: string; size: number }> {
  await requireLiveLease(deps.db, jobId, nodeId, epoch);
  const stored = await deps.blobs.put(body, maxBytes);
  return deps.db.transaction(async (tx) => {
    // Checked again: the lease may have moved while the bytes streamed.
    const job = await requireLiveLease(tx, jobId, nodeId, epoch);
    await recordOwner(tx, stored.digest, job.accountId, stored.size);
    await tx
      .insert(jobOutputs)
      .values({ jobId, digest: stored.digest, size: stored.size })
      .onConflictDoUpdate({ target: jobOutputs.jobId, set: { digest: stored.digest, size: stored.size, createdAt: new Date() } });
    return stored;
  });
}

export async function openJobOutputs(deps: BlobDeps, accountId: string, jobId: string) {
  await getOwnJob(deps.db, accountId, jobId);
  const [row] = await deps.db.select().from(jobOutputs).where(eq(jobOutputs.jobId, jobId));
  if (!row) throw notFound('outputs of this job');
  return { digest: row.digest, size: row.size, body: await openStored(deps, row.digest) };
}

/** /outputs/result.json as the agent read it: valid JSON of at most maxBytes, kept on the job. */
export async function storeJobResult(db: Db, nodeId: string, jobId: string, epoch: number, result: unknown, maxBytes: number) {
  const text = JSON.stringify(result ?? null);
  if (Buffer.byteLength(text) > maxBytes) throw new ApiError('payload_too_large', `result.json is over ${maxBytes} bytes`);
  await db.transaction(async (tx) => {
    await requireLiveLease(tx, jobId, nodeId, epoch);
    await tx.update(jobs).set({ result: result ?? null }).where(eq(jobs.id, jobId));
  });
}
