import type Docker from 'dockerode';

/** The engine the agent (and its container watchdogs) talk to: DOCKER_HOST, else the system socket. */
export function dockerOptionsFromEnv(timeoutMs?: number): Docker.DockerOptions {
  // With DOCKER_HOST set, docker-modem reads it itself; without, say the system socket.
  const base: Docker.DockerOptions = process.env.DOCKER_HOST ? {} : { socketPath: '/var/run/docker.sock' };
  return timeoutMs === undefined ? base : { ...base, timeout: timeoutMs };
}
