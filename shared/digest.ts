import { createHash } from 'node:crypto';

/** JSON with object keys sorted at every depth: the same value always gives the same text. */
export function canonicalJson(value: unknown): string {
  if (value === null || typeof value !== 'object') return JSON.stringify(value);
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  const entries = Object.entries(value as Record<string, unknown>)
    .filter(([, v]) => v !== undefined)
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(',')}}`;
}

/** The digest a lease carries for its job spec (which names its input digests). */
export function specDigest(spec: unknown): string {
  return canonicalDigest(canonicalJson(spec));
}

/** specDigest() of a spec already written as canonicalJson(). */
export function canonicalDigest(canonical: string): string {
  return `sha256:${createHash('sha256').update(canonical).digest('hex')}`;
}
