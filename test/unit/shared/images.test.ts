import { describe, expect, it } from 'vitest';
import { isLocalNetworkHost, parseImageRef, repositoryName } from '../../../shared/images.ts';
import { registryRefusal } from '../../../provider-agent/runtime/images.ts';
import { defaultAllowedRegistries } from '../../../shared/images.ts';

describe('image references', () => {
  it('split as the engine splits them: Docker Hub for a bare name, one tag, never every tag', () => {
    expect(parseImageRef('busybox')).toEqual({ registry: 'docker.io', repository: 'library/busybox', tag: 'latest', digest: null });
    expect(parseImageRef('pytorch/pytorch:2.3')).toEqual({ registry: 'docker.io', repository: 'pytorch/pytorch', tag: '2.3', digest: null });
    expect(parseImageRef('index.docker.io/busybox:1')).toMatchObject({ registry: 'docker.io', repository: 'library/busybox' });
    expect(parseImageRef('127.0.0.1:5000/gantry/busybox')).toEqual({ registry: '127.0.0.1:5000', repository: 'gantry/busybox', tag: 'latest', digest: null });
    expect(parseImageRef('localhost/x:1')).toMatchObject({ registry: 'localhost', repository: 'x', tag: '1' });
    const d = `sha256:${'a'.repeat(64)}`;
    expect(parseImageRef(`nvcr.io/nvidia/pytorch:24.01-py3@${d}`)).toEqual({ registry: 'nvcr.io', repository: 'nvidia/pytorch', tag: '24.01-py3', digest: d });
    expect(parseImageRef(`ghcr.io/a/b@${d}`)).toEqual({ registry: 'ghcr.io', repository: 'a/b', tag: null, digest: d });
    // The engine's RepoDigests use the familiar form: the same repository name comes out.
    expect(repositoryName(parseImageRef(`busybox@${d}`))).toBe('docker.io/library/busybox');
  });

  it('names the provider’s own machine and networks', () => {
    for (const h of ['127.0.0.1:5000', 'localhost:5000', '10.1.2.3', '172.16.0.1', '172.31.255.255:443', '192.168.1.10', '100.64.0.1', '169.254.169.254', '0.0.0.0', 'registry.local', 'metadata.google.internal']) {
      expect(isLocalNetworkHost(h), h).toBe(true);
    }
    for (const h of ['docker.io', 'ghcr.io', '172.32.0.1', '8.8.8.8:5000', '100.128.0.1', 'registry.example.com']) expect(isLocalNetworkHost(h), h).toBe(false);
  });

  it('refuses a registry the node does not allow, in plain words', () => {
    expect(registryRefusal(parseImageRef('busybox'), defaultAllowedRegistries)).toBeNull();
    expect(registryRefusal(parseImageRef('127.0.0.1:5000/x'), defaultAllowedRegistries)).toMatch(/^image not allowed on this node: 127\.0\.0\.1:5000 is on the provider's own machine or network/);
    expect(registryRefusal(parseImageRef('registry.example.com/x'), defaultAllowedRegistries)).toMatch(/^image not allowed on this node: it pulls only from docker\.io, ghcr\.io/);
    expect(registryRefusal(parseImageRef('127.0.0.1:5000/x'), ['127.0.0.1:5000'])).toBeNull();
    // A port is part of the name: another port on the same host is another registry.
    expect(registryRefusal(parseImageRef('127.0.0.1:5001/x'), ['127.0.0.1:5000'])).not.toBeNull();
  });
});
