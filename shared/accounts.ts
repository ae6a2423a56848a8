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

export const CreateKey = z
  .object({
    name: z.string().min(1).max(128).optional(),
    scopes: z.array(Scope).min(1).max(3),
  })
  .strict();

export const ApiKeyInfo = z.object({
  id: z.string(),
  accountId: z.string(),
  name: z.string().nullable(),
  prefix: z.string(),
  scopes: z.array(Scope),
  createdAt: z.string(),
  lastUsedAt: z.string().nullable(),
  revokedAt: z.string().nullable(),
});
export type ApiKeyInfo = z.infer<typeof ApiKeyInfo>;

/** The one answer that carries a key in clear: it is never shown again. */
export const CreatedKey = ApiKeyInfo.extend({ key: z.string() });
export type CreatedKey = z.infer<typeof CreatedKey>;
