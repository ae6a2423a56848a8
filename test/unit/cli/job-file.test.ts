import { describe, expect, it } from 'vitest';
import { JobFileError, parseJobText, validateJobSpec } from '../../../cli/job-file.ts';

function problems(text: string, file = 'job.yaml') {
  try {
    const source = parseJobText(text, file);
    validateJobSpec(source.data, source);
  } catch (err) {
    if (err instanceof JobFileError) return err.problems;
    throw err;
  }
  return [];
}

const good = `name: train
image: pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime
command: [python, train.py]
env:
  EPOCHS: "3"
resources:
  cpu: 8
  memoryMb: 65536
  gpus: 2
  gpu:
    model: H100
maxPricePerHour: 4.5
`;

describe('job files', () => {
  it('accepts a valid YAML file and fills the schema defaults', () => {
    const source = parseJobText(good, 'job.yaml');
    const spec = validateJobSpec(source.data, source);
    expect(spec.resources).toEqual({ cpu: 8, memoryMb: 65536, diskMb: 10_240, gpus: 2, gpu: { model: 'H100' } });
    expect(spec.timeoutSeconds).toBe(3600);
    expect(spec.command).toEqual(['python', 'train.py']);
  });

  it('accepts JSON, which is YAML', () => {
    const json = JSON.stringify({ name: 'x', image: 'busybox', command: ['true'], resources: { cpu: 1, memoryMb: 64 } }, null, 2);
    expect(problems(json, 'job.json')).toEqual([]);
  });

  it('names each bad field with the line it is on', () => {
    const text = [
      'name: train', //             1
      'image: busybox', //          2
      'command: python train.py', //3
      'resources:', //              4
      '  cpu: 8', //                5
      '  memoryMb: 64G', //         6
      '  gpuz: 2', //               7
      'labels:', //                 8
      '  "bad key!": x', //         9
    ].join('\n');
    const got = problems(text);
    expect(got).toContainEqual({ path: 'command', line: 3, message: expect.stringMatching(/expected array.*\["python", "train.py"\]/) });
    expect(got).toContainEqual({ path: 'resources.memoryMb', line: 6, message: expect.stringMatching(/expected number.*64G is 65536/) });
    expect(got).toContainEqual({ path: 'resources.gpuz', line: 7, message: 'unknown field' });
    expect(got).toContainEqual({ path: 'labels.bad key!', line: 9, message: expect.stringMatching(/not a valid name/) });
    expect(got).toHaveLength(4);
  });

  it('puts a missing field at its parent, and array items at their own line', () => {
    const text = ['name: x', 'image: busybox', 'command:', '  - echo', '  - 7', 'resources:', '  cpu: 1'].join('\n');
    const got = problems(text);
    expect(got).toContainEqual({ path: 'command[1]', line: 5, message: expect.stringMatching(/expected string/) });
    expect(got).toContainEqual({ path: 'resources.memoryMb', line: 6, message: expect.stringMatching(/^missing/) });
  });

  it('reports YAML syntax errors and duplicate keys with their line', () => {
    expect(problems('name: x\nimage: [unclosed\n')[0]).toMatchObject({ line: expect.any(Number) });
    const dup = problems('name: x\nname: y\n');
    expect(dup[0]).toMatchObject({ line: 2, message: expect.stringMatching(/unique/i) });
  });

  it('refuses an empty file and one that is not a mapping', () => {
    expect(problems('')[0]?.message).toMatch(/empty/);
    expect(problems('- a\n- b\n')[0]?.message).toMatch(/one mapping/);
  });

  it('formats problems as file:line: path: message', () => {
    try {
      const source = parseJobText('name: x\nimage: busybox\ncommand: [a]\nresources: {cpu: 1, memoryMb: 64, bogus: 1}\n', '/tmp/dir/job.yaml');
      validateJobSpec(source.data, source);
      expect.unreachable();
    } catch (err) {
      expect((err as Error).message).toBe('job.yaml:4: resources.bogus: unknown field');
    }
  });
});
