// The live security feed: /events (Server-Sent Events from the audit log,
// no auth, so EventSource works) folded into the panel's rows, plus the
// session's warning level for the top bar.

import { apiJson } from './api.js';
import { claims, onSessionEnd } from './auth.svelte.js';
import { poll as pollApprovals } from './approvals.svelte.js';
import { levelNumber } from './format.js';

/** Rows kept in memory; older ones drop off the bottom. */
export const MAX_ROWS = 200;
/** How much history the panel shows on sign-in. */
const BACKLOG = 50;

export const feed = $state({
  /** `{index, leaf_hash, event}`, newest first. */
  rows: [],
  connected: false,
  /** Highest risk level seen for the signed-in session, 0–5. */
  level: 0,
});

let source = null;
let lastIndex = -1;
let reopenTimer = null;
let generation = 0;
let active = false;
let synthetic = 0;

onSessionEnd(stopEvents);

/** Raises the warning level (chat `warning` events report the same ladder). */
export function noteLevel(level) {
  feed.level = Math.max(feed.level, levelNumber(level));
}

function ownSession(event) {
  const c = claims();
  // Without a `sid` claim the user's own events stand in for the session.
  if (c?.sid) return event.session === c.sid;
  return !!c?.email && event.user === c.email;
}

function accept(entry) {
  if (!entry || typeof entry !== 'object' || !entry.event) return;
  const index = Number(entry.index);
  // EventSource resumes with Last-Event-ID, but a reopen may replay a few.
  if (Number.isFinite(index)) {
    if (index <= lastIndex) return;
    lastIndex = index;
  }
  const e = entry.event;
  feed.rows.unshift({ ...entry, key: Number.isFinite(index) ? index : `x${++synthetic}` });
  if (feed.rows.length > MAX_ROWS) feed.rows.length = MAX_ROWS;
  if (e.type === 'risk.warning' && ownSession(e)) noteLevel(e.detail?.level);
  if (e.type === 'approval.required') void pollApprovals();
}

function open(since, gen) {
  if (gen !== generation) return;
  const es = new EventSource(`/events?since=${since}`);
  source = es;
  es.onopen = () => {
    feed.connected = true;
  };
  es.onmessage = (m) => {
    try {
      accept(JSON.parse(m.data));
    } catch {
      // A malformed entry is skipped; the audit page shows the log as stored.
    }
  };
  es.onerror = () => {
    feed.connected = false;
    // The browser retries by itself unless the server refused outright.
    if (es.readyState === EventSource.CLOSED && gen === generation) {
      es.close();
      reopenTimer = setTimeout(() => open(lastIndex + 1, gen), 3000);
    }
  };
}

/** Starts following the log from 50 entries before its current size. */
export async function startEvents() {
  if (active) return;
  active = true;
  const gen = ++generation;
  let since = 0;
  try {
    const { body } = await apiJson('/audit/entries?start=0&end=0');
    since = Math.max(0, Number(body?.size ?? 0) - BACKLOG);
  } catch {
    // Start from the beginning: the panel keeps at most 200 rows anyway.
  }
  open(since, gen);
}

export function stopEvents() {
  active = false;
  generation++;
  source?.close();
  source = null;
  if (reopenTimer) clearTimeout(reopenTimer);
  reopenTimer = null;
  lastIndex = -1;
  feed.rows = [];
  feed.connected = false;
  feed.level = 0;
}
