import { z } from 'zod';

export const accountKinds = ['client', 'provider', 'both'] as const;
export const AccountKind = z.enum(accountKinds);
export type AccountKind = z.infer<typeof AccountKind>;

export const scopes = ['admin', 'client', 'provider'] as const;
export const Scope = z.enum(scopes);
export type Scope = z.infer<typeof Scope>;

export const CreateAccount = z
  .object({
    name: z.string().min(1).max(128),
    kind: AccountKind,
  })
  .strict();

export const Account = z.object({
  id: z.string(),
  name: z.string(),
  kind: AccountKind,
  createdAt: z.string(),
});
export type Account = z.infer<typeof Account>;

/** How long a credential (an API key, a service token) may live from its creation: a minute to a year. */
export const CredentialLifetimeSeconds = z
  .number()
  .int()
  .min(60)
  .max(366 * 86_400);

export const CreateKey = z
  .object({
    name: z.string().min(1).max(128).optional(),
    scopes: z.array(Scope).min(1).max(3),
    /** The key stops working this long after its creation; without it, it lasts until revoked. */
    expiresInSeconds: CredentialLifetimeSeconds.optional(),
  })
  .strict();

export const ApiKeyInfo = z.object({
  id: z.string(),
  accountId: z.string(),
  name: z.string().nullable(),
  prefix: z.string(),
  scopes: z.array(Scope),
  createdAt: z.string(),
  /** Written at most once a minute per key, so it can lag by that much. */
  lastUsedAt: z.string().nullable(),
  revokedAt: z.string().nullable(),
  expiresAt: z.string().nullable(),
  /** The key that made this one; null for the admin key made at first start. */
  createdByKeyId: z.string().nullable(),
});
export type ApiKeyInfo = z.infer<typeof ApiKeyInfo>;

/** The one answer that carries a key in clear: it is never shown again. */
export const CreatedKey = ApiKeyInfo.extend({ key: z.string() });
export type CreatedKey = z.infer<typeof CreatedKey>;

export const RevokeKeyQuery = z.object({
  /** Also revoke every key this key made, and the keys those made, and so on. */
  cascade: z.enum(['true', 'false', '1', '0']).optional(),
});

/** A revocation's answer: the key, and with cascade every other key it took down. */
export const RevokedKeys = ApiKeyInfo.extend({ cascaded: z.array(ApiKeyInfo) });
export type RevokedKeys = z.infer<typeof RevokedKeys>;
