import { access } from 'node:fs/promises';
import { Readable } from 'node:stream';
import type Docker from 'dockerode';
import * as tar from 'tar-stream';
import { demux } from './engine-streams.ts';

// The agent's own helper containers: what reads, counts and removes what a job wrote where the
// agent's user cannot (engine volumes, files a root job left), without trusting any binary the
// job's image holds. The image is an empty root the agent imports itself; the programs are the
// host's own (its /usr, /bin, /lib read-only), run as root with only the capabilities the task
// needs, no network.

export const helperImage = 'gantry-agent/helper:1';
/** The label on every helper container: the node it works for (sweeps find them by it). */
export const helperLabel = 'io.gantry.helper';

const hostSystemPaths = ['/usr', '/bin', '/lib', '/lib64', '/sbin', '/etc/ld.so.cache'];

export interface HelperMount {
  /** An engine volume name, or an absolute host path (a bind). */
  source: string;
  target: string;
  readOnly: boolean;
}

export class Helper {
  private image: Promise<void> | null = null;
  private binds: Promise<Docker.MountSettings[]> | null = null;

  constructor(
    private readonly api: Docker,
    private readonly nodeId: string,
  ) {}

  /** The empty image, imported once (a tar with the mount points and nothing else). */
  ensureImage(): Promise<void> {
    this.image ??= (async () => {
      try {
        await this.api.getImage(helperImage).inspect();
        return;
      } catch (err) {
        if ((err as { statusCode?: number }).statusCode !== 404) throw err;
      }
      const pack = tar.pack();
      for (const d of ['v/', 'w/', 'in/', 'etc/', 'tmp/']) pack.entry({ name: d, type: 'directory', mode: 0o755 });
      pack.finalize();
      const [repo, tag] = helperImage.split(':') as [string, string];
      const stream = (await this.api.importImage(pack as unknown as NodeJS.ReadableStream, { repo, tag } as never)) as unknown as AsyncIterable<Buffer>;
      for await (const _ of stream) {
        /* the engine's progress: read to the end */
      }
    })().catch((err) => {
      this.image = null;
      throw err;
    });
    return this.image;
  }

  private systemMounts(): Promise<Docker.MountSettings[]> {
    this.binds ??= (async () => {
      const present: Docker.MountSettings[] = [];
      for (const p of hostSystemPaths) {
        if (await access(p).then(() => true, () => false)) present.push({ Type: 'bind', Source: p, Target: p, ReadOnly: true });
      }
      return present;
    })();
    return this.binds;
  }

  /** A helper container, created (not started): its command runs the host's sh. */
  async create(script: string, mounts: HelperMount[], capAdd: string[], purpose: string): Promise<Docker.Container> {
    await this.ensureImage();
    const system = await this.systemMounts();
    return this.api.createContainer({
      Image: helperImage,
      Cmd: ['/bin/sh', '-c', script],
      Labels: { [helperLabel]: this.nodeId, 'io.gantry.helper.purpose': purpose },
      User: '0:0',
      Env: ['PATH=/usr/bin:/bin:/usr/sbin:/sbin', 'LC_ALL=C'],
      HostConfig: {
        NetworkMode: 'none',
        ReadonlyRootfs: true,
        CapDrop: ['ALL'],
        CapAdd: capAdd,
        SecurityOpt: ['no-new-privileges'],
        PidsLimit: 64,
        Memory: 256 * 1024 * 1024,
        LogConfig: { Type: 'json-file', Config: { 'max-size': '1m', 'max-file': '1' } },
        Mounts: [
          ...system,
          ...mounts.map((m) => ({
            Type: (m.source.startsWith('/') ? 'bind' : 'volume') as 'bind' | 'volume',
            Source: m.source,
            Target: m.target,
            ReadOnly: m.readOnly,
          })),
        ],
      },
    });
  }

  /** Runs a script to its end and returns its stdout; a non-zero exit throws with its stderr. */
  async run(script: string, mounts: HelperMount[], capAdd: string[], purpose: string): Promise<string> {
    const c = await this.create(script, mounts, capAdd, purpose);
    try {
      const exited = c.wait({ condition: 'next-exit' });
      await c.start();
      const { StatusCode } = (await exited) as { StatusCode: number };
      const { stdout, stderr } = await this.output(c);
      if (StatusCode !== 0) throw new Error(`${purpose} exited ${StatusCode}: ${stderr.trim().split('\n').pop() ?? ''}`);
      return stdout;
    } finally {
      await c.remove({ force: true }).catch(() => {});
    }
  }

  private async output(c: Docker.Container): Promise<{ stdout: string; stderr: string }> {
    const buf = (await c.logs({ follow: false, stdout: true, stderr: true })) as unknown as Buffer;
    let stdout = '';
    let stderr = '';
    for await (const f of demux(Readable.from([buf]))) {
      if (f.stream === 'stdout') stdout += f.data.toString('utf8');
      else stderr += f.data.toString('utf8');
    }
    return { stdout, stderr };
  }

  /** Removes helper containers of this node left by an earlier agent. */
  async sweep(): Promise<void> {
    const left = await this.api.listContainers({ all: true, filters: { label: [`${helperLabel}=${this.nodeId}`] } });
    for (const c of left) await this.api.getContainer(c.Id).remove({ force: true }).catch(() => {});
  }
}

/**
 * What a job may write, counted the way a file system charges it: allocated bytes (blocks, not
 * apparent sizes, so sparse files cost nothing and a million empty files still cost their
 * directories) and inodes, of each folder under /v, one line "bytes inodes" every few seconds.
 * `-x` keeps each count inside its own volume. du goes on past files the job removes meanwhile
 * (and says so on stderr); a du that gives no figure at all ends the counter, which the agent logs.
 */
export function samplerScript(everySeconds: number): string {
  return (
    'while :; do b=0; i=0; for d in /v/*; do ' +
    'x=$(du -s -x -B1 "$d"); y=$(du -s -x --inodes "$d"); x=${x%%[!0-9]*}; y=${y%%[!0-9]*}; ' +
    '[ -n "$x" ] && [ -n "$y" ] || exit 3; b=$((b + x)); i=$((i + y)); done; echo "$b $i"; ' +
    `sleep ${everySeconds}; done`
  );
}
