import { readFile } from 'node:fs/promises';
import { basename } from 'node:path';
import { isMap, isScalar, isSeq, LineCounter, parseDocument, type Document, type Node } from 'yaml';
import type { z } from 'zod';
import { JobSpec } from '../shared/jobs.ts';
import { CliError, UsageError } from './errors.ts';
import { parseSizeMb } from './units.ts';

// A job file is the API's job spec written as YAML or JSON (JSON is YAML), checked with the
// same shared schema the coordinator uses, so a file that passes here is accepted there.
// Each problem names the field and the line it is on.

export interface JobProblem {
  path: string;
  line: number | null;
  /** The flag that set the field, when a flag did. */
  flag?: string;
  message: string;
}

export interface JobSource {
  file: string;
  data: Record<string, unknown>;
  /** The line of the node at a path in the file, or of its nearest parent that is there. */
  lineOf(path: readonly PropertyKey[], key?: string): number | null;
  /** The flag that set the field at a path, if one did. */
  flagOf?(path: readonly PropertyKey[]): string | null;
}

export class JobFileError extends UsageError {
  constructor(
    readonly file: string | null,
    readonly problems: JobProblem[],
  ) {
    const where = (p: JobProblem) => (p.flag ? `${p.flag}: ` : file ? `${basename(file)}${p.line ? `:${p.line}` : ''}: ` : '');
    super(problems.map((p) => `${where(p)}${p.path ? `${p.path}: ` : ''}${p.message}`).join('\n'), 'submit');
  }
}

/** "resources.memoryMb", "command[0]", "env.HOME": how a field is named in messages. */
export function formatPath(path: readonly PropertyKey[]): string {
  let out = '';
  for (const part of path) {
    if (typeof part === 'number') out += `[${part}]`;
    else out += out ? `.${String(part)}` : String(part);
  }
  return out;
}

export function parseJobText(text: string, file: string): JobSource {
  const lineCounter = new LineCounter();
  const doc = parseDocument(text, { lineCounter, uniqueKeys: true });
  const syntax = [...doc.errors];
  if (syntax.length) {
    throw new JobFileError(
      file,
      syntax.map((e) => ({
        path: '',
        line: e.linePos?.[0].line ?? null,
        message: e.message.split('\n')[0]!.replace(/ at line \d+, column \d+:?$/, ''),
      })),
    );
  }
  const data = doc.toJS({ maxAliasCount: 100 }) as unknown;
  if (data === null || data === undefined) throw new JobFileError(file, [{ path: '', line: null, message: 'the job file is empty' }]);
  if (typeof data !== 'object' || Array.isArray(data)) {
    throw new JobFileError(file, [{ path: '', line: 1, message: 'a job file holds one mapping (name:, image:, command:, resources: ...)' }]);
  }
  const lineAt = (offset: number | undefined) => (offset === undefined ? null : lineCounter.linePos(offset).line);
  return {
    file,
    data: data as Record<string, unknown>,
    lineOf(path, key) {
      const { node, found, depth } = deepest(doc, path);
      if (!found && depth > 0) return this.lineOf(path.slice(0, depth));
      if (found && key !== undefined && isMap(node)) {
        const pair = node.items.find((p) => isScalar(p.key) && String(p.key.value) === key);
        if (pair && isScalar(pair.key)) return lineAt(pair.key.range?.[0]);
      }
      if (found && path.length && key === undefined) {
        // Point at the key of a mapping entry, where a reader looks, rather than at a block value below it.
        const parent = deepest(doc, path.slice(0, -1)).node;
        const last = path[path.length - 1];
        if (isMap(parent)) {
          const pair = parent.items.find((p) => isScalar(p.key) && String(p.key.value) === String(last));
          if (pair && isScalar(pair.key)) return lineAt(pair.key.range?.[0]);
        }
      }
      return lineAt((node as Node | null)?.range?.[0]);
    },
  };
}

/** The node at a path, or the nearest parent there is (a missing field is reported where its parent starts). */
function deepest(doc: Document, path: readonly PropertyKey[]): { node: unknown; found: boolean; depth: number } {
  let node: unknown = doc.contents;
  for (const [depth, part] of path.entries()) {
    let next: unknown;
    if (isMap(node)) next = node.items.find((p) => isScalar(p.key) && String(p.key.value) === String(part))?.value;
    else if (isSeq(node) && typeof part === 'number') next = node.items[part];
    if (next === undefined || next === null) return { node, found: false, depth };
    node = next;
  }
  return { node, found: true, depth: path.length };
}

export async function readJobFile(file: string): Promise<JobSource> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const why = code === 'ENOENT' ? 'no such file' : code === 'EISDIR' ? 'is a folder, not a job file' : (err as Error).message;
    throw new CliError(`cannot read job file ${file}: ${why}`);
  }
  return parseJobText(text, file);
}

const cleanMessage = (m: string) => m.replace(/^Invalid input: /, '');

function get(data: unknown, path: readonly PropertyKey[]): unknown {
  let v = data;
  for (const p of path) v = v && typeof v === 'object' ? (v as Record<PropertyKey, unknown>)[p] : undefined;
  return v;
}

/** Turns zod's issues into problems with field paths, lines, and a hint where one helps. */
export function describeIssues(issues: readonly z.core.$ZodIssue[], data: unknown, source?: JobSource): JobProblem[] {
  const out: JobProblem[] = [];
  for (const issue of issues) {
    const path = issue.path as PropertyKey[];
    if (issue.code === 'unrecognized_keys') {
      for (const key of issue.keys) {
        const flag = source?.flagOf?.([...path, key]);
        out.push({ path: formatPath([...path, key]), line: source?.lineOf(path, key) ?? null, ...(flag ? { flag } : {}), message: 'unknown field' });
      }
      continue;
    }
    let message = cleanMessage(issue.message);
    if (issue.code === 'invalid_key') {
      const inner = issue.issues[0]?.message;
      message = `not a valid name${inner ? ` (${cleanMessage(inner)})` : ''}`;
    }
    const value = get(data, path);
    const last = path[path.length - 1];
    if (typeof last === 'string' && /Mb$/.test(last) && typeof value === 'string') {
      try {
        message += `; ${last} is in MiB: ${value} is ${parseSizeMb(value)}`;
      } catch {
        /* not a size: the plain message says enough */
      }
    }
    if ((last === 'command' || last === 'entrypoint') && path.length === 1 && typeof value === 'string') {
      message += `; write it as a list of words, e.g. [${value.split(/\s+/).filter(Boolean).slice(0, 4).map((w) => JSON.stringify(w)).join(', ')}]`;
    }
    if (value === undefined && issue.code === 'invalid_type') message = `missing (${message.replace(/, received undefined$/, '')})`;
    const flag = source?.flagOf?.(path);
    out.push({ path: formatPath(path), line: source?.lineOf(path) ?? null, ...(flag ? { flag } : {}), message });
  }
  return out;
}

/** The spec, or a JobFileError listing every problem. */
export function validateJobSpec(data: unknown, source?: JobSource): JobSpec {
  const result = JobSpec.safeParse(data);
  if (result.success) return result.data;
  throw new JobFileError(source?.file ?? null, describeIssues(result.error.issues, data, source));
}
