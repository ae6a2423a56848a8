/** A 'data' handler that cuts a child's output into lines, keeps them, and tells onLine of each. */
export function lineCollector(into: string[], onLine?: (line: string) => void): (chunk: Buffer) => void {
  let rest = '';
  return (chunk) => {
    rest += chunk.toString('utf8');
    const parts = rest.split('\n');
    rest = parts.pop()!;
    for (const l of parts) {
      into.push(l);
      onLine?.(l);
    }
  };
}
