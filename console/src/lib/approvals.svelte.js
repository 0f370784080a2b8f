// Pending human approvals. A tool call that needs one holds the chat stream
// silent until someone decides, so the list is polled every second while
// signed in, and at once when the live feed reports `approval.required`.

import { apiJson, failure } from './api.js';
import { onSessionEnd } from './auth.svelte.js';

export const approvals = $state({ list: [], error: null, acting: {} });

const POLL_MS = 1000;
let timer = null;
let inflight = false;

onSessionEnd(stopApprovals);

export function startApprovals() {
  if (timer) return;
  void poll();
  timer = setInterval(poll, POLL_MS);
}

export function stopApprovals() {
  if (timer) clearInterval(timer);
  timer = null;
  approvals.list = [];
  approvals.error = null;
  approvals.acting = {};
}

/** Reloads the pending list; overlapping polls are skipped. */
export async function poll() {
  if (inflight) return;
  inflight = true;
  try {
    const { body } = await apiJson('/api/approvals');
    const all = Array.isArray(body) ? body : Array.isArray(body?.approvals) ? body.approvals : [];
    if (timer) approvals.list = all.filter((a) => a && (a.status ?? 'pending') === 'pending');
    approvals.error = null;
  } catch (e) {
    approvals.error = failure(e);
  } finally {
    inflight = false;
  }
}

/** Approves or denies (`action` is 'approve' or 'deny'). */
export async function decide(id, action) {
  if (approvals.acting[id]) return;
  approvals.acting[id] = action;
  try {
    await apiJson(`/api/approvals/${encodeURIComponent(id)}/${action}`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: '{}',
    });
    approvals.list = approvals.list.filter((a) => a.id !== id);
    approvals.error = null;
  } catch (e) {
    approvals.error = failure(e);
  } finally {
    delete approvals.acting[id];
    void poll();
  }
}
