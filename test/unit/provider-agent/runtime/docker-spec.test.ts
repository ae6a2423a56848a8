import { describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { containerSpec, nvidiaDeviceId, pidsShare } from '../../../../provider-agent/runtime/docker-spec.ts';
import { runtimeSettings } from '../../../../provider-agent/runtime/select.ts';
import { demux, sinceParam, splitTimestamp } from '../../../../provider-agent/runtime/engine-streams.ts';
import { JobSpec } from '../../../../shared/jobs.ts';
import type { LeaseGrant } from '../../../../shared/leases.ts';

const gpuA = { id: 'GPU-aaaa', index: 0, uuid: 'GPU-aaaa', model: 'NVIDIA H100', mig: null };
const migWithUuid = { id: 'MIG-1111-2222', index: 1, uuid: 'GPU-bbbb', model: 'NVIDIA A100', mig: { gpuInstanceId: 7, computeInstanceId: 0 } };
const migLegacy = { id: 'GPU-cccc:3:0', index: 2, uuid: 'GPU-cccc', model: 'NVIDIA A100', mig: { gpuInstanceId: 3, computeInstanceId: 0 } };

function grant(spec: Record<string, unknown>, gpus: LeaseGrant['gpus'] = []): LeaseGrant {
  return {
    jobId: 'job_x',
    leaseId: 'lease_y',
    epoch: 4,
    token: 't',
    spec: JobSpec.parse({ name: 'n', image: 'busybox', command: ['echo', 'hi'], resources: { cpu: 2, memoryMb: 512, gpus: gpus.length }, ...spec }),
    gpus,
    cpuMillis: 2500,
    memoryMb: 768,
    expiresAt: '',
    expiresInMs: 0,
  };
}
const opts = {
  nodeId: 'node_z',
  imageId: 'sha256:abc',
  volumes: [
    { name: 'gantry-job_x-4-outputs', target: '/outputs', readOnly: false },
    { name: 'gantry-job_x-4-inputs', target: '/inputs', readOnly: true },
  ],
  stopGraceSeconds: 10,
};

describe('container spec', () => {
  it('grants exactly the lease: CPU, memory without swap, the named GPUs and no others', () => {
    const c = containerSpec(grant({}, [gpuA, migWithUuid, migLegacy]), opts);
    expect(c.HostConfig).toMatchObject({
      NanoCpus: 2_500_000_000,
      Memory: 768 * 1024 * 1024,
      MemorySwap: 768 * 1024 * 1024,
      DeviceRequests: [{ Driver: 'nvidia', DeviceIDs: ['GPU-aaaa', 'MIG-1111-2222', 'MIG-GPU-cccc/3/0'], Capabilities: [['gpu']] }],
    });
    expect(c.HostConfig!.DeviceRequests![0]!.Count).toBeUndefined();
    expect(c.Env).toContain('NVIDIA_VISIBLE_DEVICES=GPU-aaaa,MIG-1111-2222,MIG-GPU-cccc/3/0');
    expect(c.Image).toBe('sha256:abc');
    expect(c.Labels).toEqual({
      'io.gantry.managed': 'true',
      'io.gantry.node': 'node_z',
      'io.gantry.job': 'job_x',
      'io.gantry.lease': 'lease_y',
      'io.gantry.epoch': '4',
    });
  });

  it('shows a job without GPUs none (NVIDIA_VISIBLE_DEVICES=void, even if the job asks), hardened', () => {
    const c = containerSpec(grant({ env: { NVIDIA_VISIBLE_DEVICES: 'all', A: 'b' }, network: 'none', resources: { cpu: 1, memoryMb: 64, shmMb: 2048 } }), opts);
    expect(c.Env).toContain('NVIDIA_VISIBLE_DEVICES=void');
    expect(c.Env).not.toContain('NVIDIA_VISIBLE_DEVICES=all');
    expect(c.Env).toContain('A=b');
    expect(c.HostConfig!.DeviceRequests).toBeUndefined();
    expect(c.HostConfig).toMatchObject({
      CapDrop: ['ALL'],
      SecurityOpt: ['no-new-privileges'],
      ReadonlyRootfs: true,
      PidsLimit: 4096,
      ShmSize: 2048 * 1024 * 1024,
      NetworkMode: 'none',
      Mounts: [
        { Type: 'volume', Source: 'gantry-job_x-4-outputs', Target: '/outputs', ReadOnly: false },
        { Type: 'volume', Source: 'gantry-job_x-4-inputs', Target: '/inputs', ReadOnly: true },
      ],
    });
    expect(c.HostConfig!.Binds).toBeUndefined();
    expect(Object.keys(c.HostConfig!.Tmpfs!)).toEqual(['/tmp', '/home/gantry']);
    // Each tmpfs is bounded by the job's memory (768 MiB granted).
    expect(c.HostConfig!.Tmpfs!['/tmp']).toContain(`size=${768 * 1024 * 1024}`);
  });

  it("gives a job array's task its index and count from the verified lease, over what its spec's env says", () => {
    const task = containerSpec({ ...grant({ env: { GANTRY_TASK_INDEX: '99' } }), task: { index: 3, count: 8 } }, opts);
    expect(task.Env).toEqual(expect.arrayContaining(['GANTRY_TASK_INDEX=3', 'GANTRY_TASK_COUNT=8']));
    expect(task.Env).not.toContain('GANTRY_TASK_INDEX=99');
    expect(containerSpec(grant({}), opts).Env!.some((e) => e.startsWith('GANTRY_TASK_'))).toBe(false);
  });

  it('replaces CMD with the command, and ENTRYPOINT only when the spec has one; 1 GiB of shm by default', () => {
    const plain = containerSpec(grant({}), opts);
    expect(plain.Cmd).toEqual(['echo', 'hi']);
    expect(plain.Entrypoint).toBeUndefined();
    expect(plain.HostConfig!.ShmSize).toBe(1024 * 1024 * 1024);
    expect(plain.HostConfig!.NetworkMode).toBe('bridge');
    // A bridge job on the agent's isolated network, with IPv6 off (the rules are IPv4's).
    const isolated = containerSpec(grant({}), { ...opts, networkMode: 'gantry-jobs', disableIpv6: true }).HostConfig!;
    expect(isolated.NetworkMode).toBe('gantry-jobs');
    expect(isolated.Sysctls).toEqual({ 'net.ipv6.conf.all.disable_ipv6': '1' });
    expect(containerSpec(grant({ network: 'none' }), { ...opts, networkMode: 'none', disableIpv6: true }).HostConfig!.Sysctls).toBeUndefined();
    expect(containerSpec(grant({ entrypoint: ['/bin/sh', '-c'] }), opts).Entrypoint).toEqual(['/bin/sh', '-c']);
  });

  it('maps GPU ids to what the NVIDIA runtime accepts', () => {
    expect(nvidiaDeviceId(gpuA)).toBe('GPU-aaaa');
    expect(nvidiaDeviceId(migWithUuid)).toBe('MIG-1111-2222');
    expect(nvidiaDeviceId(migLegacy)).toBe('MIG-GPU-cccc/3/0');
  });

  it('leases GPUs that share one UUID by index: the UUID would hand the job both', () => {
    const twin = (index: number, bus: string) => ({ id: `GPU-dddd/${bus}`, index, uuid: 'GPU-dddd', model: 'NVIDIA RTX A5000', mig: null });
    const c = containerSpec(grant({}, [twin(1, '00000000:C1:00.0')]), opts);
    expect(c.HostConfig!.DeviceRequests).toEqual([{ Driver: 'nvidia', DeviceIDs: ['1'], Capabilities: [['gpu']] }]);
    expect(c.Env).toContain('NVIDIA_VISIBLE_DEVICES=1');
    expect(nvidiaDeviceId(twin(0, '00000000:81:00.0'))).toBe('0');
  });

});

describe('engine streams', () => {
  const frame = (type: number, text: string) => {
    const body = Buffer.from(text);
    const head = Buffer.alloc(8);
    head[0] = type;
    head.writeUInt32BE(body.length, 4);
    return Buffer.concat([head, body]);
  };

  it('demultiplexes frames whatever the pieces they arrive in', async () => {
    const all = Buffer.concat([frame(1, 'out 1\n'), frame(2, 'err 1\n'), frame(1, 'é'), frame(1, '\n')]);
    for (const size of [1, 3, 7, 100]) {
      const pieces = async function* () {
        for (let i = 0; i < all.length; i += size) yield all.subarray(i, i + size);
      };
      const got: [string, string][] = [];
      for await (const f of demux(pieces())) got.push([f.stream, f.data.toString()]);
      expect(got).toEqual([
        ['stdout', 'out 1\n'],
        ['stderr', 'err 1\n'],
        ['stdout', 'é'],
        ['stdout', '\n'],
      ]);
    }
  });

  it('splits the engine timestamp off a log frame, normalized so times compare as text', () => {
    const a = splitTimestamp(Buffer.from('2026-12-01T16:45:29.828123456Z hello world\n'));
    expect(a.ts).toBe('2026-12-01T16:45:29.828123456Z');
    expect(a.payload.toString()).toBe('hello world\n');
    expect(splitTimestamp(Buffer.from('2026-12-01T16:45:29.8Z x')).ts).toBe('2026-12-01T16:45:29.800000000Z');
    expect(splitTimestamp(Buffer.from('no timestamp here')).ts).toBeNull();
    expect(sinceParam('2026-12-01T16:45:29.828123456Z')).toBe(`${Date.UTC(2026, 11, 1, 16, 45, 29) / 1000}.828123456`);
  });
});

describe("a node's pids budget, split across its jobs", () => {
  it('gives each job its CPU share of the budget, at least 64 and at most the per-job cap', () => {
    // 16 cores, a budget of 32,768: a 4-core job gets a quarter.
    expect(pidsShare(32_768, 4000, 16_000, 16_384)).toBe(8192);
    expect(pidsShare(32_768, 4000, 16_000, 4096)).toBe(4096);
    expect(pidsShare(32_768, 10, 16_000, 4096)).toBe(64);
    // Jobs that fill the node's CPUs never hold more than the budget between them.
    expect(4 * pidsShare(32_768, 4000, 16_000, 1_000_000)).toBeLessThanOrEqual(32_768);
  });

  it("refuses a budget above the host's pid_max, and defaults to half of it", () => {
    const pidMax = Number(readFileSync('/proc/sys/kernel/pid_max', 'utf8'));
    expect(runtimeSettings('/s', {}).pidsBudget).toBe(Math.floor(pidMax / 2));
    expect(runtimeSettings('/s', { GANTRY_AGENT_PIDS_BUDGET: String(pidMax) }).pidsBudget).toBe(pidMax);
    expect(() => runtimeSettings('/s', { GANTRY_AGENT_PIDS_BUDGET: String(pidMax + 1) })).toThrow(/above this host's pid_max/);
  });

  it('takes no job below 0.01 of a core', () => {
    const spec = { name: 'n', image: 'busybox', command: ['true'], resources: { cpu: 0.005, memoryMb: 64 } };
    expect(JobSpec.safeParse(spec).success).toBe(false);
    expect(JobSpec.parse({ ...spec, resources: { cpu: 0.01, memoryMb: 64 } }).resources).toMatchObject({ cpu: 0.01, diskMb: 10_240 });
  });
});
