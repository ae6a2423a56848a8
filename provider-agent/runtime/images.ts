import { readFile, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type Docker from 'dockerode';
import { isLocalNetworkHost, parseImageRef, repositoryName, type ImageRef } from '../../shared/images.ts';
import { jsonLines } from './engine-streams.ts';
import type { ExecutionContext } from './executor.ts';

// The images a node runs for its clients: each pulled, anonymously, from a registry the provider
// allows, by the digest its registry names for the job's reference at lease time, and run only
// when the engine's copy carries exactly that registry/repository@digest. A locally built image,
// or a private one the provider pulled with its own login, has no such anonymous digest and
// never runs for a client. The images pulled this way are a cache of bounded size.

export interface ImageLogger {
  info(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
}

/** What the client is told when its image does not run here: plain words, never the engine's. */
export class ImageRefused extends Error {}

export const defaultImageCacheMb = 20_480;

/** Why this node does not pull from the image's registry, or null when it does. */
export function registryRefusal(ref: Pick<ImageRef, 'registry'>, allowed: readonly string[]): string | null {
  if (allowed.includes(ref.registry)) return null;
  if (isLocalNetworkHost(ref.registry)) {
    return `image not allowed on this node: ${ref.registry} is on the provider's own machine or network, which a job may not pull from`;
  }
  return `image not allowed on this node: it pulls only from ${allowed.join(', ')}, not ${ref.registry}`;
}

interface CachedImage {
  /** registry/repository@digest: how the agent pulled it and how it removes it. */
  ref: string;
  sizeBytes: number;
  lastUsedMs: number;
}

const statusOf = (err: unknown) => (err as { statusCode?: number })?.statusCode;
const mib = 1024 * 1024;

export interface ImageStoreOptions {
  api: Docker;
  /** For pulls, which last as long as the download: no socket timeout. */
  streams: Docker;
  allowedRegistries: readonly string[];
  cacheMb: number;
  /** Where the cache's list (which images the agent pulled, when each was last used) is kept. */
  indexFile: string;
  log: ImageLogger;
  /** The engine's own words for a failure, for the provider's log only. */
  engineReason: (err: unknown) => string;
}

export class ImageStore {
  private index: Record<string, CachedImage> | null = null;
  /** Image ids with a job running on them now: never removed. */
  private readonly inUse = new Map<string, number>();
  private pruning: Promise<void> = Promise.resolve();
  /** Writes of the cache's list, one after the other. */
  private saving: Promise<void> = Promise.resolve();

  constructor(private readonly o: ImageStoreOptions) {}

  /**
   * The image the job runs (the engine's inspect of it): refused by registry, resolved to a
   * digest, present with exactly that digest or pulled by it. Throws ImageRefused with the client's
   * reason. Each acquire is matched by a release(its Id) when the job has ended.
   */
  async acquire(image: string, ctx: ExecutionContext, lookedUp: Promise<string> = this.lookUp(image)): Promise<Docker.ImageInspectInfo> {
    const pinned = await lookedUp;
    let info = await this.present(pinned);
    if (!info) {
      await this.pull(pinned, image, ctx);
      info = await this.present(pinned);
      if (!info) throw new ImageRefused(`image could not be pulled: the engine holds no ${pinned} after pulling it`);
    }
    this.inUse.set(info.Id, (this.inUse.get(info.Id) ?? 0) + 1);
    await this.touch(info, pinned);
    return info;
  }

  /**
   * registry/repository@digest for the job's image: refused by registry, else resolved at its
   * registry now. Asked for every lease, even for a pinned digest: a private image the provider
   * pulled must not run for a client who knows its digest. Side-effect free, so a run may start
   * it before it knows it needs it (acquire takes the answer).
   */
  async lookUp(image: string): Promise<string> {
    const ref = parseImageRef(image);
    const refusal = registryRefusal(ref, this.o.allowedRegistries);
    if (refusal) throw new ImageRefused(refusal);
    return `${repositoryName(ref)}@${await this.resolve(image, ref)}`;
  }

  /** The job on this image ended: it counts as used now, and the cache is trimmed to its cap. */
  async release(imageId: string): Promise<void> {
    const n = (this.inUse.get(imageId) ?? 1) - 1;
    if (n > 0) this.inUse.set(imageId, n);
    else this.inUse.delete(imageId);
    const index = await this.load();
    const entry = index[imageId];
    if (entry) entry.lastUsedMs = Date.now();
    this.pruning = this.pruning.then(() => this.prune()).catch((err) => this.o.log.warn('image cache not trimmed', { error: this.o.engineReason(err) }));
    await this.pruning;
  }

  /** What the images the agent pulled take now, in MiB. */
  async usedMb(): Promise<number> {
    return Math.ceil(Object.values(await this.load()).reduce((s, e) => s + e.sizeBytes, 0) / mib);
  }

  /** The digest the image's registry serves for its tag (or its pinned digest) now, asked anonymously through the engine. */
  private async resolve(image: string, ref: ImageRef): Promise<string> {
    try {
      const info = await this.o.api.getImage(ref.digest ? `${repositoryName(ref)}@${ref.digest}` : `${repositoryName(ref)}:${ref.tag ?? 'latest'}`).distribution();
      const digest = info?.Descriptor?.digest;
      if (typeof digest !== 'string' || !/^sha256:[a-f0-9]{64}$/.test(digest)) throw new Error('no digest in the answer');
      if (ref.digest && digest !== ref.digest) throw new Error(`the registry serves ${digest} for ${ref.digest}`);
      return digest;
    } catch (err) {
      this.o.log.warn('image not resolved at its registry', { image, error: this.o.engineReason(err) });
      const status = statusOf(err);
      // The engine answers 500 for a registry that wants a login: its words tell (read here, never passed on).
      if (status === 404 || status === 401 || status === 403 || /unauthorized|denied|not found|manifest unknown/i.test(this.o.engineReason(err))) {
        throw new ImageRefused(`image could not be pulled: ${image} is not a public image at ${ref.registry}`);
      }
      throw new ImageRefused(`image could not be pulled: its registry ${ref.registry} did not answer`);
    }
  }

  /** The image when the engine holds it with exactly this registry/repository@digest. */
  private async present(pinned: string): Promise<Docker.ImageInspectInfo | null> {
    let info: Docker.ImageInspectInfo;
    try {
      info = await this.o.api.getImage(pinned).inspect();
    } catch (err) {
      if (statusOf(err) === 404) return null;
      throw err;
    }
    const digests = (info.RepoDigests ?? []).map((d) => {
      const r = parseImageRef(d);
      return `${repositoryName(r)}@${r.digest}`;
    });
    return digests.includes(pinned) ? info : null;
  }

  private async pull(pinned: string, image: string, ctx: ExecutionContext): Promise<void> {
    const started = Date.now();
    ctx.onProgress?.(`pulling image ${image} (${pinned.slice(pinned.indexOf('@') + 1)})`);
    this.o.log.info('pulling image', { image: pinned });
    const layers = new Map<string, { current: number; total: number }>();
    let lastNote = Date.now();
    try {
      // No credentials are passed: a pull for a client is anonymous.
      const stream = (await this.o.streams.pull(pinned)) as NodeJS.ReadableStream & { destroy?: () => void };
      const onAbort = () => stream.destroy?.();
      ctx.signal.addEventListener('abort', onAbort, { once: true });
      try {
        for await (const ev of jsonLines(stream as AsyncIterable<Buffer>)) {
          const e = ev as { error?: string; errorDetail?: { message?: string }; status?: string; id?: string; progressDetail?: { current?: number; total?: number } };
          if (e.error) throw new Error(e.errorDetail?.message ?? e.error);
          if (e.id && e.progressDetail?.total) layers.set(e.id, { current: e.progressDetail.current ?? 0, total: e.progressDetail.total });
          if (e.id && (e.status === 'Download complete' || e.status === 'Pull complete' || e.status === 'Already exists')) {
            const l = layers.get(e.id);
            if (l) l.current = l.total;
          }
          if (Date.now() - lastNote >= 5000 && layers.size) {
            lastNote = Date.now();
            let cur = 0;
            let tot = 0;
            for (const l of layers.values()) {
              cur += l.current;
              tot += l.total;
            }
            ctx.onProgress?.(`pulling image ${image}: ${Math.floor((cur / Math.max(1, tot)) * 100)}% of ${(tot / 1e6).toFixed(1)} MB`);
            this.o.log.info('pulling image', { image: pinned, currentBytes: cur, totalBytes: tot });
          }
        }
      } finally {
        ctx.signal.removeEventListener('abort', onAbort);
      }
    } catch (err) {
      if (ctx.signal.aborted) throw err;
      this.o.log.warn('image pull failed', { image: pinned, error: this.o.engineReason(err) });
      throw new ImageRefused('image could not be pulled');
    }
    if (ctx.signal.aborted) throw new Error('pull stopped');
    const secs = ((Date.now() - started) / 1000).toFixed(1);
    ctx.onProgress?.(`pulled image ${image} in ${secs} s`);
    this.o.log.info('pulled image', { image: pinned, seconds: Number(secs) });
  }

  private async load(): Promise<Record<string, CachedImage>> {
    if (this.index) return this.index;
    try {
      const parsed = JSON.parse(await readFile(this.o.indexFile, 'utf8')) as unknown;
      this.index = parsed && typeof parsed === 'object' ? (parsed as Record<string, CachedImage>) : {};
    } catch {
      this.index = {};
    }
    return this.index;
  }

  /** The list as it is now onto disk, after any write of it still under way. */
  private save(): Promise<void> {
    const write = async () => {
      const tmp = `${this.o.indexFile}.tmp`;
      await writeFile(tmp, JSON.stringify(this.index ?? {}), { mode: 0o600 });
      await rename(tmp, this.o.indexFile);
    };
    const next = this.saving.then(write);
    this.saving = next.catch(() => {});
    return next;
  }

  /** The image counts as used now; its list is written meanwhile (a run does not wait for the disk). */
  private async touch(info: Docker.ImageInspectInfo, pinned: string): Promise<void> {
    const index = await this.load();
    index[info.Id] = { ref: pinned, sizeBytes: info.Size ?? 0, lastUsedMs: Date.now() };
    void this.save().catch((err) => this.o.log.warn('image cache list not saved', { error: (err as Error).message }));
  }

  /** Least recently used first, images no job runs on now, until the cache is within its cap. */
  private async prune(): Promise<void> {
    const index = await this.load();
    const cap = this.o.cacheMb * mib;
    let total = Object.values(index).reduce((s, e) => s + e.sizeBytes, 0);
    if (total <= cap) return;
    const idle = Object.entries(index)
      .filter(([id]) => !this.inUse.has(id))
      .sort(([, a], [, b]) => a.lastUsedMs - b.lastUsedMs);
    for (const [id, entry] of idle) {
      if (total <= cap) break;
      try {
        // By the reference the agent pulled: an image the provider also tagged keeps its own names.
        await this.o.api.getImage(entry.ref).remove();
      } catch (err) {
        const status = statusOf(err);
        if (status === 409) continue; // a container (not one of ours running now) still uses it
        if (status !== 404) {
          this.o.log.warn('cached image not removed', { image: entry.ref, error: this.o.engineReason(err) });
          continue;
        }
      }
      delete index[id];
      total -= entry.sizeBytes;
      this.o.log.info('removed a cached image (image cache over its cap)', { image: entry.ref, sizeMb: Math.round(entry.sizeBytes / mib) });
    }
    await this.save();
  }
}

/** The cache's list, beside the jobs' folders in the agent's work dir. */
export const imageCacheIndex = (workDir: string) => join(workDir, 'images.json');

/**
 * What the image cache may still grow by, in MiB: the node's advertised free disk leaves it out.
 * Read from the cache's list, so the hardware report needs no engine call.
 */
export async function imageCacheReserveMb(workDir: string, cacheMb: number): Promise<number> {
  let used = 0;
  try {
    const index = JSON.parse(await readFile(imageCacheIndex(workDir), 'utf8')) as Record<string, CachedImage>;
    for (const e of Object.values(index)) used += Number(e.sizeBytes) || 0;
  } catch {
    /* no list yet: nothing cached */
  }
  return Math.max(0, cacheMb - Math.ceil(used / mib));
}
