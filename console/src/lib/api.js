// Authenticated calls to the fabric: a fresh Bearer token on every request,
// and a 401 ends the session (the server no longer accepts the token, e.g.
// after a CAEP session revocation).

import { accessToken, endSession, SessionEnded } from './auth.svelte.js';

export class HttpError extends Error {
  constructor(status, message, body) {
    super(message);
    this.name = 'HttpError';
    this.status = status;
    this.body = body;
  }
}

/** fetch with `Authorization: Bearer`; resolves to the Response. */
export async function apiFetch(path, init = {}) {
  const token = await accessToken();
  const headers = new Headers(init.headers);
  headers.set('Authorization', `Bearer ${token}`);
  const res = await fetch(path, { ...init, headers });
  if (res.status === 401) {
    endSession();
    throw new SessionEnded();
  }
  return res;
}

/** apiFetch, then the body as JSON; throws HttpError on a non-2xx status. */
export async function apiJson(path, init = {}) {
  const res = await apiFetch(path, init);
  const text = await res.text();
  let body = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = null;
  }
  if (!res.ok) {
    const why = body?.error_description ?? body?.error ?? body?.message ?? text.slice(0, 200);
    const method = init.method ?? 'GET';
    throw new HttpError(res.status, `${method} ${path}: HTTP ${res.status}${why ? ` — ${why}` : ''}`, body);
  }
  return { body, res };
}

/** apiFetch for a text body (the checkpoint note). */
export async function apiText(path) {
  const res = await apiFetch(path);
  const text = await res.text();
  if (!res.ok) throw new HttpError(res.status, `GET ${path}: HTTP ${res.status}`, null);
  return text;
}

/** The message to show for a failed call; null when the session ended (the screen says so). */
export function failure(e) {
  if (e instanceof SessionEnded) return null;
  return e?.message ?? String(e);
}
