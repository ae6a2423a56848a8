import type { Logger } from '../log.ts';
import type { Principal } from '../auth/api-keys.ts';

/** What a request carries through Hono's context. */
export interface AppEnv {
  Variables: {
    requestId: string;
    log: Logger;
    principal: Principal;
    /** The node an agent request comes from (set by requireAgent). */
    nodeId: string;
  };
}
