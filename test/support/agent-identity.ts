import { exportJWK, generateKeyPair, SignJWT, type CryptoKey, type JWK } from 'jose';
import type { HardwareReport, MetricsSample } from '../../shared/hardware.ts';

/** An agent's key pair, as `gantry-agent join` makes one. */
export async function newAgentKey(): Promise<{ publicJwk: JWK; privateKey: CryptoKey }> {
  const { publicKey, privateKey } = await generateKeyPair('EdDSA', { crv: 'Ed25519', extractable: true });
  return { publicJwk: await exportJWK(publicKey), privateKey };
}

/** An agent token with the claims a test wants (defaults: what a well-behaved agent signs). */
export async function signAgentToken(
  privateKey: CryptoKey,
  claims: { sub: string; aud: string; iatSeconds?: number; expSeconds?: number },
): Promise<string> {
  const now = Math.floor(Date.now() / 1000);
  const iat = claims.iatSeconds ?? now;
  return new SignJWT({})
    .setProtectedHeader({ alg: 'EdDSA', typ: 'JWT' })
    .setSubject(claims.sub)
    .setAudience(claims.aud)
    .setIssuedAt(iat)
    .setExpirationTime(claims.expSeconds ?? iat + 60)
    .sign(privateKey);
}

/**
 * The inventory an agent would report for a machine with the two RTX A5000 of the fixture
 * rtx-a5000-x2-v13.xml (its UUIDs, memory, driver), under a suffix so that tests can make
 * distinct machines.
 */
export function a5000Machine(suffix: string, gpuCount = 2): HardwareReport {
  return {
    host: {
      cpuCores: 16,
      cpuModel: 'AMD Ryzen 9 5950X 16-Core Processor',
      memoryMb: 64_000,
      diskFreeMb: 500_000,
      os: 'Linux 6.1.0-18-amd64',
      arch: 'x64',
      hostname: `rig-${suffix}`,
      containerRuntime: { kind: 'docker', version: '20.10.24' },
    },
    gpus: Array.from({ length: gpuCount }, (_, i) => ({
      id: `GPU-12345678-aaaa-bbbb-cccc-${suffix.padStart(6, '0').slice(-6)}${String(i).padStart(6, '0')}`,
      index: i,
      uuid: `GPU-12345678-aaaa-bbbb-cccc-${suffix.padStart(6, '0').slice(-6)}${String(i).padStart(6, '0')}`,
      model: 'NVIDIA RTX A5000',
      memoryMb: 24_564,
      driverVersion: '590.44.01',
      cudaVersion: '13.1',
      pciBusId: `00000000:0${i + 1}:00.0`,
      mig: null,
    })),
    warnings: [],
  };
}

/** What one heartbeat's nvidia-smi --query-gpu sample would say of that machine. */
export function metricsFor(report: HardwareReport, n = 0): MetricsSample {
  return {
    at: new Date().toISOString(),
    gpus: [...new Map(report.gpus.map((g) => [g.uuid, g])).values()].map((g) => ({
      id: g.uuid,
      utilizationPct: (37 + n) % 101,
      memoryUsedMb: 1024 + n,
      temperatureC: 41,
      powerW: 61.5,
    })),
    host: { loadAvg1: 0.5, memoryUsedMb: 12_000 },
  };
}
