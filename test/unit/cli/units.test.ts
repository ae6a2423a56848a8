import { describe, expect, it } from 'vitest';
import { formatDuration, formatSizeMb, parseDurationSeconds, parsePair, parseSizeMb, parseWholeNumber } from '../../../cli/units.ts';

describe('sizes', () => {
  it('reads binary units, whatever the spelling', () => {
    expect(parseSizeMb('64G')).toBe(65536);
    expect(parseSizeMb('64GiB')).toBe(65536);
    expect(parseSizeMb('64gb')).toBe(65536);
    expect(parseSizeMb('64Gi')).toBe(65536);
    expect(parseSizeMb('512M')).toBe(512);
    expect(parseSizeMb('1.5T')).toBe(1_572_864);
    expect(parseSizeMb('1.5G')).toBe(1536);
    expect(parseSizeMb('2048K')).toBe(2);
    expect(parseSizeMb('4096')).toBe(4096);
  });

  it('refuses what is not a whole number of MiB or not a size', () => {
    expect(() => parseSizeMb('0.1G')).toThrow(/whole number of MiB/);
    expect(() => parseSizeMb('100K')).toThrow(/whole number of MiB/);
    expect(() => parseSizeMb('64X')).toThrow(/not a size/);
    expect(() => parseSizeMb('-1G')).toThrow(/not a size/);
    expect(() => parseSizeMb('')).toThrow(/not a size/);
  });

  it('prints sizes in the largest unit that reads well', () => {
    expect(formatSizeMb(65536)).toBe('64G');
    expect(formatSizeMb(1536)).toBe('1.5G');
    expect(formatSizeMb(512)).toBe('512M');
    expect(formatSizeMb(1_572_864)).toBe('1.5T');
    expect(formatSizeMb(81_559)).toBe('79.6G');
  });
});

describe('durations', () => {
  it('reads 90s, 30m, 2h, 1h30m, 1d and plain seconds', () => {
    expect(parseDurationSeconds('90s')).toBe(90);
    expect(parseDurationSeconds('30m')).toBe(1800);
    expect(parseDurationSeconds('2h')).toBe(7200);
    expect(parseDurationSeconds('1h30m')).toBe(5400);
    expect(parseDurationSeconds('1d')).toBe(86_400);
    expect(parseDurationSeconds('1.5h')).toBe(5400);
    expect(parseDurationSeconds('600')).toBe(600);
    expect(() => parseDurationSeconds('2 hours')).toThrow(/not a duration/);
    expect(() => parseDurationSeconds('h')).toThrow(/not a duration/);
  });

  it('prints the two largest units', () => {
    expect(formatDuration(5400)).toBe('1h30m');
    expect(formatDuration(125)).toBe('2m5s');
    expect(formatDuration(45)).toBe('45s');
    expect(formatDuration(0)).toBe('0s');
    expect(formatDuration(3600)).toBe('1h');
    expect(formatDuration(90_061)).toBe('1d1h');
  });
});

describe('flag values', () => {
  it('reads whole numbers within bounds and K=V pairs', () => {
    expect(parseWholeNumber('8', 0, 64)).toBe(8);
    expect(() => parseWholeNumber('65', 0, 64)).toThrow(/out of range/);
    expect(() => parseWholeNumber('2.5', 0, 64)).toThrow(/whole number/);
    expect(parsePair('A=b=c')).toEqual(['A', 'b=c']);
    expect(parsePair('A=')).toEqual(['A', '']);
    expect(() => parsePair('=x')).toThrow(/KEY=VALUE/);
    expect(() => parsePair('x')).toThrow(/KEY=VALUE/);
  });
});
