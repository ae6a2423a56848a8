// Ids carry a prefix that says what they name, then a time-ordered random part, so a
// list sorted by id is sorted by creation time and a cursor can be the last id.
const alphabet = '0123456789abcdefghjkmnpqrstvwxyz';

export const idPrefixes = {
  account: 'acct',
  apiKey: 'key',
  job: 'job',
  node: 'node',
  enrollmentToken: 'enr',
  lease: 'lease',
  serviceToken: 'stok',
} as const;
export type IdKind = keyof typeof idPrefixes;

function randomBytes(n: number): Uint8Array {
  const bytes = new Uint8Array(n);
  globalThis.crypto.getRandomValues(bytes);
  return bytes;
}

/** n random characters of [0-9a-z] (without i, l, o, u): for ids and key prefixes. */
export function randomLowercase(n: number): string {
  let out = '';
  for (const b of randomBytes(n)) out += alphabet[b % 32];
  return out;
}

export function newId(kind: IdKind, now = Date.now()): string {
  let time = '';
  let t = now;
  for (let i = 0; i < 10; i++) {
    time = alphabet[t % 32] + time;
    t = Math.floor(t / 32);
  }
  return `${idPrefixes[kind]}_${time}${randomLowercase(12)}`;
}

export function idPattern(kind: IdKind): RegExp {
  return new RegExp(`^${idPrefixes[kind]}_[0-9a-z]{22}$`);
}
