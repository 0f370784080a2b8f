// The conversation with the agent: POST /api/chat answers with an event
// stream (text deltas, tool calls and their results, warnings) that this
// module folds into the list the Chat page renders. It lives outside the
// page so a conversation survives a visit to another page.

import { apiFetch, failure } from './api.js';
import { endSession, onSessionEnd, SessionEnded } from './auth.svelte.js';
import { readSse } from './sse.js';
import { poll as pollApprovals } from './approvals.svelte.js';
import { load, save, KEYS } from './storage.js';

export const chat = $state({
  /**
   * Items in arrival order: {kind: 'user'|'assistant', text},
   * {kind: 'tool', id, tool, arguments, status: 'calling'|'done'|'refused', text, refusal},
   * {kind: 'warning', level, text}, {kind: 'error', message}.
   */
  items: [],
  busy: false,
});

let key = 0;
let controller = null;

onSessionEnd(() => {
  controller?.abort();
  controller = null;
  chat.items = [];
  chat.busy = false;
});

function push(item) {
  chat.items.push({ key: ++key, ...item });
  // The stored copy is a reactive proxy; later updates must go through it.
  return chat.items[chat.items.length - 1];
}

function parse(data) {
  try {
    return JSON.parse(data);
  } catch {
    return null;
  }
}

/** Sends `message`; resolves when the answer is complete. */
export async function send(message) {
  const text = message.trim();
  if (!text || chat.busy) return;
  chat.busy = true;
  push({ kind: 'user', text });
  controller = new AbortController();
  const signal = controller.signal;
  // One assistant bubble per answer, created by its first text delta.
  let bubble = null;
  const body = { message: text };
  const conversation = load(KEYS.conversation);
  if (conversation) body.conversation_id = conversation;
  try {
    const res = await apiFetch('/api/chat', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', Accept: 'text/event-stream' },
      body: JSON.stringify(body),
      signal,
    });
    if (!res.ok) {
      let why = '';
      try {
        const err = await res.json();
        why = err?.error_description ?? err?.error ?? err?.message ?? '';
      } catch {
        // No JSON body: the status says enough.
      }
      push({ kind: 'error', message: `the chat request failed: HTTP ${res.status}${why ? ` — ${why}` : ''}` });
      return;
    }
    await readSse(res, ({ event, data }) => {
      const d = parse(data) ?? {};
      switch (event) {
        case 'conversation':
          if (d.conversation_id) save(KEYS.conversation, d.conversation_id);
          break;
        case 'text':
          if (!bubble) bubble = push({ kind: 'assistant', text: '' });
          bubble.text += d.delta ?? '';
          break;
        case 'tool_call':
          push({
            kind: 'tool',
            id: d.id,
            tool: d.tool,
            arguments: d.arguments,
            status: 'calling',
            text: null,
            refusal: null,
          });
          break;
        case 'tool_result': {
          const card = chat.items.findLast((i) => i.kind === 'tool' && i.id === d.id);
          const target =
            card ??
            push({ kind: 'tool', id: d.id, tool: d.tool, arguments: undefined, status: 'calling' });
          const refused = d.refusal || d.ok === false;
          target.status = refused ? 'refused' : 'done';
          target.text = d.text ?? null;
          target.refusal = d.refusal ?? null;
          break;
        }
        case 'approval_required': {
          // The gateway holds this call until the user decides: say so on
          // its card, and fetch the approval card now rather than at the next poll.
          const card = chat.items.findLast(
            (i) => i.kind === 'tool' && i.status === 'calling' && (!d.tool || i.tool === d.tool),
          );
          if (card) card.status = 'awaiting';
          void pollApprovals();
          break;
        }
        case 'warning':
          push({ kind: 'warning', level: d.level ?? null, text: d.text ?? '' });
          break;
        case 'session_ended':
          endSession(d.message);
          return false;
        case 'error':
          push({ kind: 'error', message: d.message ?? 'the agent failed' });
          break;
        case 'done':
          return false;
        default:
          // Events this build does not know are ignored.
          break;
      }
      return true;
    });
  } catch (e) {
    if (!(e instanceof SessionEnded) && e?.name !== 'AbortError') {
      const why = failure(e);
      if (why) push({ kind: 'error', message: `the chat stream broke: ${why}` });
    }
  } finally {
    if (controller?.signal === signal) controller = null;
    chat.busy = false;
  }
}

/** Forgets the conversation and starts a new one. */
export function newConversation() {
  if (chat.busy) return;
  chat.items = [];
  save(KEYS.conversation, null);
}
