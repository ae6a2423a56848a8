import { ApiError } from '../errors.ts';

// A job's outputs are stored as the plain tar the agent packs (it never compresses): a
// compressed archive would let a node hand a client a file that grows a thousandfold on disk.

const blockBytes = 512;

/** Whether a 512-byte block is a tar header whose checksum holds, or the zero block that ends an archive. */
export function isTarHeaderBlock(block: Uint8Array): boolean {
  if (block.length !== blockBytes) return false;
  if (block.every((b) => b === 0)) return true;
  const stored = Number.parseInt(Buffer.from(block.subarray(148, 156)).toString('latin1').replace(/[\0 ]+$/, '').trim(), 8);
  if (!Number.isInteger(stored)) return false;
  // The checksum counts its own 8 bytes as spaces.
  let sum = 8 * 0x20;
  for (let i = 0; i < blockBytes; i++) if (i < 148 || i >= 156) sum += block[i]!;
  return sum === stored;
}

/** Passes source through once its first block has shown it is a plain tar; refuses it otherwise. */
export async function* requirePlainTar(source: AsyncIterable<Uint8Array>): AsyncIterable<Uint8Array> {
  const head: Uint8Array[] = [];
  let have = 0;
  for await (const piece of source) {
    if (have >= blockBytes) {
      yield piece;
      continue;
    }
    head.push(piece);
    have += piece.length;
    if (have < blockBytes) continue;
    const joined = Buffer.concat(head);
    if (!isTarHeaderBlock(joined.subarray(0, blockBytes))) throw notPlainTar();
    yield joined;
  }
  if (have < blockBytes) throw notPlainTar();
}

const notPlainTar = () => new ApiError('unsupported_media_type', 'outputs must be a plain, uncompressed tar archive');
