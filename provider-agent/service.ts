import { mkdir, writeFile } from 'node:fs/promises';
import { userInfo } from 'node:os';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ServiceSettings } from './config.ts';
import { AgentState } from './state.ts';

const agentBin = fileURLToPath(new URL('../bin/gantry-agent.js', import.meta.url));

/** systemd's quoting for one word of ExecStart: double quotes, with \ and " escaped. */
const quote = (word: string) => (/^[A-Za-z0-9_@%+=:,./-]+$/.test(word) ? word : `"${word.replace(/[\\"]/g, (c) => `\\${c}`)}"`);

/** The unit that runs `gantry-agent run` at boot and restarts it when it stops. */
export function systemdUnit(opts: { stateDir: string; user: string; nodeBinary?: string; agentBin?: string }): string {
  const exec = [opts.nodeBinary ?? process.execPath, opts.agentBin ?? agentBin, 'run', '--state-dir', resolve(opts.stateDir)];
  return `[Unit]
Description=Gantry provider agent (joins this machine's GPUs to a Gantry pool)
Wants=network-online.target
After=network-online.target docker.service

[Service]
Type=simple
User=${opts.user}
# As root (+) whatever User= says: the firewall rules that isolate jobs' bridge network,
# which do not survive a reboot. Without them the node takes only network: none jobs.
ExecStartPre=+${[exec[0]!, exec[1]!, 'network-rules'].map(quote).join(' ')}
ExecStart=${exec.map(quote).join(' ')}
Restart=always
RestartSec=5
# The agent stops its heartbeats and leaves running containers to be found again at start.
KillSignal=SIGTERM
TimeoutStopSec=30

[Install]
WantedBy=multi-user.target
`;
}

/** Writes the unit for this enrolled machine; returns where, and what to run next. */
export async function installService(settings: ServiceSettings): Promise<{ unitPath: string; next: string }> {
  const node = await new AgentState(settings.stateDir).readNode();
  if (!node) throw new Error(`this machine is not enrolled yet (no node in ${settings.stateDir}): run gantry-agent join first`);
  const unit = systemdUnit({ stateDir: settings.stateDir, user: settings.user ?? userInfo().username });
  await mkdir(dirname(settings.unitPath), { recursive: true });
  await writeFile(settings.unitPath, unit, { mode: 0o644 });
  const name = settings.unitPath.split('/').pop()!;
  return { unitPath: settings.unitPath, next: `systemctl daemon-reload && systemctl enable --now ${name}` };
}
