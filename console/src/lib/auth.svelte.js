// Sign-in for a public OAuth client: authorization code with PKCE S256,
// tokens in sessionStorage, refresh before expiry, and the agent grant
// (RFC 8693 `may_act`) obtained through the server's consent page.
//
// The access token's payload is decoded for display and routing only; every
// decision that matters is the server's, on every request.

import { load, save, drop, KEYS } from './storage.js';
import { jwtPayload, mayActNames, pkcePair, randomToken } from './encoding.js';

export const ENDED_TEXT = 'Your session has ended — sign in again';

/** Refresh this long before expiry, so no request leaves with a dying token. */
const REFRESH_MARGIN_MS = 30_000;

/** Thrown to callers whose request cannot go out because the session is over. */
export class SessionEnded extends Error {
  constructor() {
    super('the session has ended');
    this.name = 'SessionEnded';
  }
}

export const auth = $state({
  /** GET /api/config. */
  config: null,
  /** The authorization server metadata (RFC 8414). */
  meta: null,
  /** `{access_token, refresh_token, expires_at}` or null. */
  tokens: load(KEYS.tokens),
  email: null,
  /** Set when the session ended under the user: the sign-in-again text. */
  ended: null,
  /** Why sign-in failed, for the sign-in screen. */
  error: null,
  /** Signed in, but the token does not let the agent act for the user. */
  needsGrant: false,
});

const endListeners = new Set();

/** Calls `fn` whenever the session ends or the user signs out. */
export function onSessionEnd(fn) {
  endListeners.add(fn);
  return () => endListeners.delete(fn);
}

export function signedIn() {
  return !!auth.tokens && auth.ended === null;
}

/** The access token's claims (display only), or null. */
export function claims() {
  return jwtPayload(auth.tokens?.access_token);
}

async function getJson(url) {
  const res = await fetch(url, { headers: { Accept: 'application/json' } });
  if (!res.ok) throw new Error(`GET ${url}: HTTP ${res.status}`);
  return res.json();
}

let configPromise = null;

/** Loads /api/config and the server metadata once. */
export function ensureConfig() {
  if (!configPromise) {
    configPromise = Promise.all([
      getJson('/api/config'),
      getJson('/.well-known/oauth-authorization-server'),
    ])
      .then(([config, meta]) => {
        auth.config = config;
        auth.meta = meta;
        return { config, meta };
      })
      .catch((e) => {
        // Let the next attempt try again rather than cache the failure.
        configPromise = null;
        throw e;
      });
  }
  return configPromise;
}

/** Starts sign-in: PKCE pair and state in sessionStorage, then the authorization endpoint. */
export async function signIn() {
  auth.error = null;
  try {
    const { config, meta } = await ensureConfig();
    const home = new URL(config.redirect_uri, location.href);
    if (home.origin !== location.origin) {
      // The code comes back to redirect_uri's origin, whose sessionStorage
      // must hold the verifier: start over there.
      location.assign(`${home.origin}/?sign_in=1`);
      return;
    }
    const { verifier, challenge } = await pkcePair();
    const state = randomToken(16);
    save(KEYS.pkce, { verifier, state });
    const url = new URL(meta.authorization_endpoint, location.href);
    const params = {
      response_type: 'code',
      client_id: config.client_id,
      redirect_uri: config.redirect_uri,
      scope: config.scope,
      state,
      code_challenge: challenge,
      code_challenge_method: 'S256',
    };
    for (const [k, v] of Object.entries(params)) url.searchParams.set(k, v);
    location.assign(url.toString());
  } catch (e) {
    auth.error = `sign-in could not start: ${e.message}`;
  }
}

async function tokenRequest(form) {
  const { meta } = await ensureConfig();
  const res = await fetch(meta.token_endpoint, {
    method: 'POST',
    headers: {
      'Content-Type': 'application/x-www-form-urlencoded',
      Accept: 'application/json',
    },
    body: new URLSearchParams(form).toString(),
  });
  let body = null;
  try {
    body = await res.json();
  } catch {
    // Not JSON: reported by status below.
  }
  if (!res.ok) {
    const detail = body?.error_description ? `: ${body.error_description}` : '';
    const err = new Error(`token request failed: ${body?.error ?? `HTTP ${res.status}`}${detail}`);
    err.status = res.status;
    throw err;
  }
  if (!body?.access_token) throw new Error('token response carries no access_token');
  return body;
}

function storeTokens(body, previousRefresh) {
  const c = jwtPayload(body.access_token);
  const expiresIn = Number(body.expires_in);
  let expiresAt;
  if (Number.isFinite(expiresIn) && expiresIn > 0) expiresAt = Date.now() + expiresIn * 1000;
  else if (typeof c?.exp === 'number') expiresAt = c.exp * 1000;
  else expiresAt = Date.now() + 5 * 60_000;
  auth.tokens = {
    access_token: body.access_token,
    // A server that does not rotate refresh tokens omits it: keep ours.
    refresh_token: body.refresh_token ?? previousRefresh ?? null,
    expires_at: expiresAt,
  };
  save(KEYS.tokens, auth.tokens);
}

/**
 * Finishes the authorization code flow on /callback. Returns 'consent' when
 * the page is leaving for the consent page, 'chat' otherwise; throws with a
 * message for the user on failure.
 */
export async function completeCallback(search) {
  const params = new URLSearchParams(search);
  const saved = load(KEYS.pkce);
  drop(KEYS.pkce);
  if (params.get('error')) {
    const desc = params.get('error_description');
    throw new Error(`the authorization server said ${params.get('error')}${desc ? `: ${desc}` : ''}`);
  }
  const code = params.get('code');
  if (!code) throw new Error('the callback carries no authorization code');
  if (!saved?.state || params.get('state') !== saved.state) {
    throw new Error('the sign-in state does not match this tab: start again');
  }
  const { config } = await ensureConfig();
  const body = await tokenRequest({
    grant_type: 'authorization_code',
    code,
    redirect_uri: config.redirect_uri,
    client_id: config.client_id,
    code_verifier: saved.verifier,
  });
  auth.ended = null;
  auth.error = null;
  storeTokens(body, null);
  await loadEmail();
  if (!mayActNames(claims(), config.agent)) {
    goToConsent();
    return 'consent';
  }
  return 'chat';
}

let refreshing = null;

/**
 * Refreshes the access token. Concurrent callers share one request: the
 * server rotates refresh tokens, and a second use of the old one would look
 * like theft. A 400/401 ends the session.
 */
export function refresh() {
  if (!refreshing) {
    refreshing = doRefresh().finally(() => {
      refreshing = null;
    });
  }
  return refreshing;
}

async function doRefresh() {
  const current = auth.tokens;
  if (!current?.refresh_token) {
    endSession(ENDED_TEXT);
    throw new SessionEnded();
  }
  const { config } = await ensureConfig();
  try {
    const body = await tokenRequest({
      grant_type: 'refresh_token',
      refresh_token: current.refresh_token,
      client_id: config.client_id,
    });
    storeTokens(body, current.refresh_token);
  } catch (e) {
    if (e.status === 400 || e.status === 401) {
      endSession(ENDED_TEXT);
      throw new SessionEnded();
    }
    throw e;
  }
}

/** A valid access token, refreshed first when it expires within 30 s. */
export async function accessToken() {
  if (!signedIn()) throw new SessionEnded();
  if (auth.tokens.expires_at - Date.now() < REFRESH_MARGIN_MS) await refresh();
  if (!signedIn()) throw new SessionEnded();
  return auth.tokens.access_token;
}

async function loadEmail() {
  const c = claims();
  if (c?.email) {
    auth.email = c.email;
    return;
  }
  try {
    const token = await accessToken();
    const url = auth.meta?.userinfo_endpoint ?? '/oauth2/userinfo';
    const res = await fetch(url, { headers: { Authorization: `Bearer ${token}` } });
    if (res.ok) {
      const info = await res.json();
      auth.email = info.email ?? info.preferred_username ?? info.sub ?? null;
    }
  } catch {
    // The top bar shows "—"; nothing else depends on it.
  }
}

/** On a page load with stored tokens: config, email, and whether the agent is granted. */
export async function resume() {
  const { config } = await ensureConfig();
  await loadEmail();
  auth.needsGrant = !mayActNames(claims(), config.agent);
}

/** Back from the consent page: the refreshed token carries `may_act`. */
export async function finishConsent() {
  const { config } = await ensureConfig();
  await refresh();
  await loadEmail();
  // Still no grant (the user denied): say so instead of looping back.
  auth.needsGrant = !mayActNames(claims(), config.agent);
}

/** The server's consent page for the agent and every RAR type, back to /chat. */
export function consentUrl() {
  const q = new URLSearchParams({
    agent: auth.config?.agent ?? '',
    types: (auth.config?.rar_types ?? []).join(','),
    return_to: '/chat?consented=1',
  });
  return `/consent?${q}`;
}

export function goToConsent() {
  location.assign(consentUrl());
}

function clearLocal() {
  auth.tokens = null;
  auth.email = null;
  auth.needsGrant = false;
  drop(KEYS.tokens);
  drop(KEYS.conversation);
  for (const fn of endListeners) fn();
}

/** The session ended under the user (revoked, refresh refused, 401). */
export function endSession(message) {
  if (!auth.tokens && auth.ended) return;
  auth.ended = message || ENDED_TEXT;
  clearLocal();
}

/** Signs out at the server (its session cookie) and forgets the tokens. */
export async function signOut() {
  auth.ended = null;
  auth.error = null;
  clearLocal();
  try {
    await fetch('/oauth2/logout', {
      method: 'POST',
      credentials: 'include',
      headers: { 'Content-Type': 'application/x-www-form-urlencoded' },
      body: '',
    });
  } catch {
    // Locally signed out either way; the server session expires on its own.
  }
}
