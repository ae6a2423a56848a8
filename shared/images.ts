import { z } from 'zod';

// Image references as the Docker engine reads them (distribution/reference's normalization), and
// the registries a node pulls from: the agent enforces them, the coordinator matches jobs to them.

/** The public registries a node pulls from unless its provider names others (--allow-registry). */
export const defaultAllowedRegistries = ['docker.io', 'ghcr.io', 'nvcr.io', 'quay.io', 'registry.k8s.io', 'public.ecr.aws'] as const;

/** A registry as the provider names it: HOST or HOST:PORT, lowercase, as it stands in image references. */
export const RegistryHost = z
  .string()
  .min(1)
  .max(253)
  .regex(/^[a-z0-9]+([.-][a-z0-9]+)*(:[0-9]{1,5})?$/, 'a registry host, like ghcr.io or 10.0.0.5:5000');

export interface ImageRef {
  /** Where it is pulled from: docker.io for a bare name, else the reference's first part. */
  registry: string;
  /** The repository in its registry: library/busybox, gantry/busybox. */
  repository: string;
  tag: string | null;
  digest: string | null;
}

/** Docker Hub's other names in references: the engine files them all under docker.io. */
const dockerHubAliases = new Set(['docker.io', 'index.docker.io', 'registry-1.docker.io']);

/**
 * A reference split as the engine splits it: the first path part is a registry when it has a dot
 * or a port or is localhost; otherwise the image is on Docker Hub, under library/ when it has
 * no namespace. A bare name means :latest.
 */
export function parseImageRef(image: string): ImageRef {
  let rest = image;
  let digest: string | null = null;
  const at = rest.indexOf('@');
  if (at >= 0) {
    digest = rest.slice(at + 1);
    rest = rest.slice(0, at);
  }
  let tag: string | null = null;
  const lastSlash = rest.lastIndexOf('/');
  const colon = rest.indexOf(':', lastSlash + 1);
  if (colon >= 0) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
  }
  const slash = rest.indexOf('/');
  const first = slash >= 0 ? rest.slice(0, slash) : '';
  let registry = 'docker.io';
  let repository = rest;
  if (slash >= 0 && (first.includes('.') || first.includes(':') || first === 'localhost')) {
    registry = first;
    repository = rest.slice(slash + 1);
  }
  if (dockerHubAliases.has(registry)) {
    registry = 'docker.io';
    if (!repository.includes('/')) repository = `library/${repository}`;
  }
  if (tag === null && digest === null) tag = 'latest';
  return { registry, repository, tag, digest };
}

/** registry/repository, the name every form of a reference to the same repository shares. */
export const repositoryName = (r: Pick<ImageRef, 'registry' | 'repository'>) => `${r.registry}/${r.repository}`;

export const imageRegistry = (image: string) => parseImageRef(image).registry;

/** The host part of HOST[:PORT]. */
export const registryHostname = (registry: string) => registry.replace(/:[0-9]+$/, '');

/**
 * Whether a registry host is on the provider's own machine or network: loopback, the private
 * ranges (10/8, 172.16/12, 192.168/16, 100.64/10), link-local (169.254/16), or a name that stands
 * for one (localhost, *.local, *.internal). Such a registry is pulled from only when named.
 * (References and RegistryHost have no IPv6 form.)
 */
export function isLocalNetworkHost(registry: string): boolean {
  const h = registryHostname(registry).toLowerCase();
  if (h === 'localhost' || h.endsWith('.localhost') || h.endsWith('.local') || h.endsWith('.internal')) return true;
  const m = /^(\d{1,3})\.(\d{1,3})\.\d{1,3}\.\d{1,3}$/.exec(h);
  if (!m) return false;
  const a = Number(m[1]);
  const b = Number(m[2]);
  return a === 0 || a === 127 || a === 10 || (a === 172 && b >= 16 && b <= 31) || (a === 192 && b === 168) || (a === 100 && b >= 64 && b <= 127) || (a === 169 && b === 254);
}
