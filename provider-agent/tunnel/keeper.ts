import { retry } from '../../shared/backoff.ts';
import { ApiRequestError, NoContent, type ApiClient } from '../../shared/client.ts';
import type { LeaseGrant } from '../../shared/leases.ts';
import type { ServiceHooks } from '../leases/runner.ts';
import { waitUntilReady } from './readiness.ts';
import type { ServiceAddress, ServiceTunnel } from './tunnel.ts';

/**
 * The runner's service hooks: a started service job is put in the tunnel's table, probed until it
 * answers, and reported ready under its lease's epoch; its run's end takes it out again. After an
 * agent restart the resumed run starts here again, and is probed and reported again.
 */
export class ServiceKeeper implements ServiceHooks {
  private epochs = new Map<string, number>();

  constructor(
    private tunnel: ServiceTunnel,
    private client: ApiClient,
    private log: (line: string) => void,
  ) {}

  started(grant: LeaseGrant, address: ServiceAddress, signal: AbortSignal): void {
    const { jobId, epoch } = grant;
    this.epochs.set(jobId, epoch);
    this.tunnel.add(jobId, address);
    void this.becomeReady(grant, address, signal);
  }

  ended(grant: LeaseGrant): void {
    if (this.epochs.get(grant.jobId) !== grant.epoch) return;
    this.epochs.delete(grant.jobId);
    this.tunnel.remove(grant.jobId);
  }

  private async becomeReady(grant: LeaseGrant, address: ServiceAddress, signal: AbortSignal): Promise<void> {
    const { jobId, epoch } = grant;
    if (!(await waitUntilReady(address, grant.spec.service?.readinessPath, signal))) return;
    try {
      await retry(() => this.client.post(`/v1/agent/jobs/${encodeURIComponent(jobId)}/service-ready`, { epoch }, NoContent), {
        initialMs: 500,
        maxMs: 10_000,
        signal,
        // A 4xx will not change: the lease moved on, or the job ended.
        retryable: (err) => !(err instanceof ApiRequestError && err.status >= 400 && err.status < 500),
      });
      this.log(`service ready ${JSON.stringify({ jobId, epoch })}`);
    } catch (err) {
      if (!signal.aborted) this.log(`warning: service ready report refused ${JSON.stringify({ jobId, epoch, error: (err as Error).message })}`);
    }
  }
}
