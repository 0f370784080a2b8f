// Display helpers shared by every page: missing values show as "—", times
// may arrive as Unix milliseconds, seconds or RFC 3339 text.

export const DASH = '—';

/** A value as display text; null, undefined and "" become "—". */
export function show(value) {
  if (value === null || value === undefined || value === '') return DASH;
  if (Array.isArray(value)) return value.length ? value.map(show).join(', ') : DASH;
  if (typeof value === 'object') return JSON.stringify(value);
  return String(value);
}

/** Milliseconds since the epoch, or null. Numbers below 1e11 are taken as seconds. */
export function toMillis(value) {
  if (value === null || value === undefined || value === '') return null;
  if (typeof value === 'number') return value < 1e11 ? value * 1000 : value;
  if (/^\d+$/.test(String(value))) return toMillis(Number(value));
  const t = Date.parse(String(value));
  return Number.isNaN(t) ? null : t;
}

/** A timestamp as local date and time, or "—". */
export function showTime(value) {
  const ms = toMillis(value);
  if (ms === null) return DASH;
  const d = new Date(ms);
  const pad = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

/** "12 s ago", "3 min ago", "in 40 s"; "—" for no time. */
export function relative(value, now) {
  const ms = toMillis(value);
  if (ms === null) return DASH;
  const delta = Math.round((now - ms) / 1000);
  // The page's clock ticks once a second: an event newer than its last tick
  // is "just now", not in the future.
  if (delta > -5 && delta < 1) return 'just now';
  const abs = Math.abs(delta);
  let text;
  if (abs < 60) text = `${abs} s`;
  else if (abs < 3600) text = `${Math.floor(abs / 60)} min`;
  else if (abs < 86400) text = `${Math.floor(abs / 3600)} h`;
  else text = `${Math.floor(abs / 86400)} d`;
  return delta >= 0 ? `${text} ago` : `in ${text}`;
}

/** Seconds left until `value`, never negative, or null. */
export function secondsLeft(value, now) {
  const ms = toMillis(value);
  if (ms === null) return null;
  return Math.max(0, Math.ceil((ms - now) / 1000));
}

/** The last path segment of a SPIFFE ID or URI: `assistant` for `spiffe://example.org/agent/assistant`. */
export function shortName(id) {
  if (typeof id !== 'string' || id === '') return DASH;
  const trimmed = id.replace(/\/+$/, '');
  const i = trimmed.lastIndexOf('/');
  return i >= 0 ? trimmed.slice(i + 1) || trimmed : trimmed;
}

/** Pretty JSON for argument and result blocks. */
export function pretty(value) {
  if (value === undefined) return DASH;
  try {
    return JSON.stringify(value, null, 2);
  } catch {
    return String(value);
  }
}

/** `W3` → 3; anything else → 0. */
export function levelNumber(level) {
  const m = /^W([0-5])$/.exec(String(level ?? ''));
  return m ? Number(m[1]) : 0;
}
