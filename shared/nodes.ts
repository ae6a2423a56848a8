import { z } from 'zod';

/** The longest an agent's own token may live: the coordinator refuses anything longer. */
export const agentTokenMaxLifetimeSeconds = 60;
