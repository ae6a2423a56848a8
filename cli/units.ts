// Sizes the way people write them for machines: binary units, so 64G = 64 GiB = 65536 MB,
// and durations like 2h or 1h30m. Pure functions, shared by flags and tables.

const sizeUnits: Record<string, number> = { k: 1 / 1024, m: 1, g: 1024, t: 1024 * 1024, p: 1024 * 1024 * 1024 };

/**
 * A size in MiB (what the API calls MB) from "64G", "64GiB", "64GB", "512M", "1.5T" or a plain
 * number of MiB. Every unit is binary. Throws a message that names what was wrong.
 */
export function parseSizeMb(text: string): number {
  const m = text.trim().match(/^(\d+(?:\.\d+)?)\s*(?:([kmgtp])(?:ib|i|b)?)?$/i);
  if (!m) throw new Error(`"${text}" is not a size (like 512M, 64G or 1.5T)`);
  const value = Number(m[1]) * sizeUnits[(m[2] ?? 'm').toLowerCase()]!;
  if (!Number.isFinite(value)) throw new Error(`"${text}" is too large`);
  const rounded = Math.round(value);
  if (Math.abs(value - rounded) > 1e-9) throw new Error(`"${text}" is not a whole number of MiB`);
  return rounded;
}

/** 65536 → "64G", 1536 → "1.5G", 512 → "512M": the largest unit that keeps at most one decimal. */
export function formatSizeMb(mb: number): string {
  const units: [string, number][] = [
    ['P', 1024 ** 3],
    ['T', 1024 ** 2],
    ['G', 1024],
  ];
  for (const [unit, size] of units) {
    if (mb >= size) {
      const v = mb / size;
      return `${Number.isInteger(v) ? v : v.toFixed(1).replace(/\.0$/, '')}${unit}`;
    }
  }
  return `${Math.round(mb)}M`;
}

const durationUnits: Record<string, number> = { s: 1, m: 60, h: 3600, d: 86_400 };

/** Seconds from "90s", "30m", "2h", "1h30m", "1d" or a plain number of seconds. */
export function parseDurationSeconds(text: string): number {
  const t = text.trim();
  if (/^\d+$/.test(t)) return Number(t);
  if (!/^(\d+(\.\d+)?[smhd])+$/i.test(t)) throw new Error(`"${text}" is not a duration (like 90s, 30m, 2h or 1h30m)`);
  let total = 0;
  for (const [, n, unit] of t.matchAll(/(\d+(?:\.\d+)?)([smhd])/gi)) total += Number(n) * durationUnits[unit!.toLowerCase()]!;
  const rounded = Math.round(total);
  if (Math.abs(total - rounded) > 1e-9) throw new Error(`"${text}" is not a whole number of seconds`);
  return rounded;
}

/** 5400 → "1h30m", 125 → "2m5s", 45 → "45s", 90000 → "1d1h": the two largest units. */
export function formatDuration(seconds: number): string {
  let s = Math.max(0, Math.round(seconds));
  const parts: string[] = [];
  for (const [unit, size] of [
    ['d', 86_400],
    ['h', 3600],
    ['m', 60],
    ['s', 1],
  ] as const) {
    if (s >= size || (unit === 's' && parts.length === 0)) {
      const n = Math.floor(s / size);
      s -= n * size;
      if (n > 0 || parts.length === 0) parts.push(`${n}${unit}`);
    }
    if (parts.length === 2) break;
  }
  return parts.join('');
}

/** A whole number within bounds, from a flag's text. */
export function parseWholeNumber(text: string, min: number, max: number): number {
  if (!/^\d+$/.test(text.trim())) throw new Error(`"${text}" is not a whole number`);
  const n = Number(text);
  if (n < min || n > max) throw new Error(`${n} is out of range (${min} to ${max})`);
  return n;
}

/** A decimal number ≥ 0 (CPU cores, prices), from a flag's text. */
export function parseDecimal(text: string): number {
  if (!/^\d+(\.\d+)?$/.test(text.trim())) throw new Error(`"${text}" is not a number`);
  return Number(text);
}

/** "K=V" → [K, V]; the value may contain "=". */
export function parsePair(text: string): [string, string] {
  const i = text.indexOf('=');
  if (i <= 0) throw new Error(`"${text}" is not KEY=VALUE`);
  return [text.slice(0, i), text.slice(i + 1)];
}
