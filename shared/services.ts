import { z } from 'zod';
import { CredentialLifetimeSeconds } from './accounts.ts';

// Service jobs (spec.service): the tokens that call one in its owner's stead, and what the agent
// reports about one. The spec itself is ServiceSpec in shared/jobs.ts.

export const CreateServiceToken = z
  .object({
    name: z.string().min(1).max(128),
    /** The token stops working this long after its creation; without it, it lasts until revoked or the job ends. */
    expiresInSeconds: CredentialLifetimeSeconds.optional(),
  })
  .strict();

export const ServiceTokenInfo = z.object({
  id: z.string(),
  jobId: z.string(),
  name: z.string(),
  prefix: z.string(),
  createdAt: z.string(),
  expiresAt: z.string().nullable(),
  revokedAt: z.string().nullable(),
});
export type ServiceTokenInfo = z.infer<typeof ServiceTokenInfo>;

/** The one answer that carries a service token in clear: it is never shown again. */
export const CreatedServiceToken = ServiceTokenInfo.extend({ token: z.string() });
export type CreatedServiceToken = z.infer<typeof CreatedServiceToken>;

export const ServiceTokenList = z.object({ items: z.array(ServiceTokenInfo) });

/** The agent's word that a service job's readiness probe passed, under the lease's epoch. */
export const ServiceReadyReport = z.object({ epoch: z.number().int().min(0) }).strict();

/** The query parameter a browser's first visit carries a service token in (traded for a cookie). */
export const serviceTokenQueryParam = 'gantry_token';
/** The cookie a traded token lives in, on the service's own host only. */
export const serviceTokenCookie = 'gantry_service_token';
/** The path the agent's tunnel (a WebSocket carrying HTTP/2) is opened on. */
export const agentTunnelPath = '/v1/agent/tunnel';
/** The HTTP/2 request header by which the coordinator names the job a tunnelled request is for. */
export const tunnelJobHeader = 'x-gantry-job';
