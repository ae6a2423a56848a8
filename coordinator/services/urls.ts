import { idPattern } from '../../shared/ids.ts';

const jobId = idPattern('job').source.slice(1, -1);

/**
 * Where service jobs answer: one origin per job, from a template whose host starts with {job}
 * (GANTRY_SERVICES_URL). The coordinator routes a request to a job by its Host header alone.
 */
export class ServiceUrls {
  private hostPattern: RegExp;

  constructor(readonly template: string) {
    const url = new URL(template.replace('{job}', 'job'));
    const rest = url.host.slice('job'.length).replace(/[.*+?^$()|[\]\\]/g, '\\$&');
    // A template without a port matches the name on any port (a proxy in front may add one).
    this.hostPattern = new RegExp(`^(${jobId})${rest}${url.port ? '' : '(:\\d+)?'}$`, 'i');
  }

  /** The default: http://{job}.localhost:<port> on the coordinator's own listener. */
  static localDefault(scheme: string, port: number): ServiceUrls {
    return new ServiceUrls(`${scheme}://{job}.localhost:${port}`);
  }

  urlOf(jobId: string): string {
    return this.template.replace('{job}', jobId);
  }

  /** The job a Host header names, or null for any other host (the API's own). */
  jobOfHost(host: string | undefined): string | null {
    if (!host) return null;
    const m = this.hostPattern.exec(host);
    return m ? m[1]!.toLowerCase() : null;
  }
}
