// Strings that cross a wire as data: what PostgreSQL cannot store, and what a node's text is
// cleaned of before it is stored. Regexes without the u flag work on UTF-16 code units, which
// is what finds a surrogate without its pair.

const loneSurrogate = '[\\uD800-\\uDBFF](?![\\uDC00-\\uDFFF])|(?<![\\uD800-\\uDBFF])[\\uDC00-\\uDFFF]';

/** PostgreSQL refuses NUL in text and jsonb, and a lone surrogate is not Unicode (jsonb refuses its escape). */
const unstorable = new RegExp(`\\u0000|${loneSurrogate}`);

/** What stands in for a character taken out of a node's text. */
export const replacementChar = '\uFFFD';

export const hasUnstorable = (text: string) => unstorable.test(text);

/**
 * The first string (or object key) under value holding a NUL or a lone surrogate, as a dotted
 * path ('' for value itself), or null when there is none.
 */
export function findUnstorable(value: unknown, path: string[] = []): string | null {
  if (typeof value === 'string') return hasUnstorable(value) ? path.join('.') : null;
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) {
      const found = findUnstorable(value[i], [...path, String(i)]);
      if (found !== null) return found;
    }
    return null;
  }
  if (value && typeof value === 'object' && Object.getPrototypeOf(value) === Object.prototype) {
    for (const [k, v] of Object.entries(value)) {
      const at = [...path, k.replace(new RegExp(`\\u0000|${loneSurrogate}`, 'g'), replacementChar)];
      if (hasUnstorable(k)) return at.join('.');
      const found = findUnstorable(v, at);
      if (found !== null) return found;
    }
  }
  return null;
}

const messageControls = new RegExp(`[\\u0000-\\u001f\\u007f-\\u009f]|${loneSurrogate}`, 'g');

/**
 * A message a node wrote (a job's error, a progress note), as it is stored: one line, every
 * control character (escape sequences' ESC included), NUL and lone surrogate replaced.
 */
export function cleanNodeMessage(text: string): string {
  return text.replace(messageControls, (c) => (c === '\t' || c === '\n' || c === '\r' ? ' ' : replacementChar));
}

// Tab, carriage return and ESC stay: a job's colours and progress bars are its output. A
// terminal is protected where the log is shown (the CLI drops every escape but colour).
const logControls = new RegExp(`[\\u0000-\\u0008\\u000a-\\u000c\\u000e-\\u001a\\u001c-\\u001f\\u007f-\\u009f]|${loneSurrogate}`, 'g');

/** One line of a job's output as it is stored: NUL, lone surrogates and controls but \t, \r and ESC replaced. */
export function cleanLogLine(text: string): string {
  return text.replace(logControls, replacementChar);
}
