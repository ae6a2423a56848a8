// Prices travel as decimal numbers of currency units and are kept as integer micro-units,
// so sums and comparisons are exact.
export const microsPerUnit = 1_000_000;

export function toMicros(units: number): number {
  return Math.round(units * microsPerUnit);
}

export function fromMicros(micros: number): number {
  return micros / microsPerUnit;
}

/** At most six decimals: anything finer cannot be kept as micro-units. */
export function hasMicroPrecision(units: number): boolean {
  return Math.abs(units * microsPerUnit - Math.round(units * microsPerUnit)) < 1e-6;
}

export function formatPrice(micros: number): string {
  return fromMicros(micros).toFixed(2);
}

/** An amount as people write money: at least two decimals, up to six, without trailing zeros. */
export function formatAmount(micros: number): string {
  const s = fromMicros(micros).toFixed(6).replace(/0{1,4}$/, '');
  return s === '-0.00' ? '0.00' : s;
}
