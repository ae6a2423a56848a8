import { decodeJwt, generateKeyPair } from 'jose';
import { describe, expect, it } from 'vitest';
import { AgentTokenSigner } from '../../../provider-agent/agent-token.ts';

describe('AgentTokenSigner', () => {
  it('reuses a token until shortly before its end', async () => {
    const { privateKey } = await generateKeyPair('EdDSA', { crv: 'Ed25519' });
    let now = 1_800_000_000_000;
    const signer = new AgentTokenSigner(privateKey, 'node_x', 'gantry', { now: () => now });
    const first = await signer.token();
    now += 30_000;
    expect(await signer.token()).toBe(first);
    now += 20_000;
    expect(await signer.token()).not.toBe(first);
  });

  it("signs anew when its clock moves back (the coordinator's clock, read from its answers, is an hour behind this machine's)", async () => {
    const { privateKey } = await generateKeyPair('EdDSA', { crv: 'Ed25519' });
    const coordinator = 1_800_000_000_000;
    let now = coordinator + 3_600_000;
    const signer = new AgentTokenSigner(privateKey, 'node_x', 'gantry', { now: () => now });
    const early = await signer.token();
    now = coordinator;
    const corrected = await signer.token();
    expect(corrected).not.toBe(early);
    expect(decodeJwt(corrected).iat).toBe(coordinator / 1000);
  });
});
