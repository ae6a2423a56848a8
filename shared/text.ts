// Strings that cross a wire as data: what PostgreSQL cannot store, and what a node's text is
// cleaned of before it is stored. Regexes without the u flag work on UTF-16 code units, which
// is what finds a surrogate without its pair.

const loneSurrogate = '[\\uD800-\\uDBFF](?![\\uDC00-\\uDFFF])|(?<![\\uD800-\\uDBFF])[\\uDC00-\\uDFFF]';

/** PostgreSQL refuses NUL in text and jsonb, and a lone surrogate is not Unicode (jsonb refuses its escape). */
const unstorable = new RegExp(`\\u0000|${loneSurrogate}`);

/** What stands in for a character taken out of a node's text. */
export const replacementChar = '\uFFFD';

const unstorableEach = new RegExp(unstorable.source, 'g');

export const hasUnstorable = (text: string) => unstorable.test(text);

/**
 * The first string (or object key) under value holding a NUL or a lone surrogate, as a dotted
 * path ('' for value itself), or null when there is none. Every validated request body goes
 * through here: nothing is allocated unless something is found.
 */
export function findUnstorable(value: unknown): string | null {
  const found = unstorableAt(value);
  return found === null ? null : found.reverse().join('.');
}

/** The path to the first unstorable string, innermost segment first. */
function unstorableAt(value: unknown): string[] | null {
  if (typeof value === 'string') return hasUnstorable(value) ? [] : null;
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) {
      const found = unstorableAt(value[i]);
      if (found !== null) return [...found, String(i)];
    }
    return null;
  }
  if (value && typeof value === 'object' && Object.getPrototypeOf(value) === Object.prototype) {
    for (const k in value) {
      if (hasUnstorable(k)) return [k.replace(unstorableEach, replacementChar)];
      const found = unstorableAt((value as Record<string, unknown>)[k]);
      if (found !== null) return [...found, k];
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
