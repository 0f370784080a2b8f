// Byte and text encodings the console needs: base64url for PKCE and JWT
// payloads, standard base64 (or hex) for the audit log's hashes. Pure
// functions so that the Node tests can check them without a browser.

/** Encodes bytes as base64url without padding (RFC 4648 §5, RFC 7636). */
export function base64UrlEncode(bytes) {
  let binary = '';
  for (const b of bytes) binary += String.fromCharCode(b);
  return btoa(binary).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

/**
 * Decodes base64 in either alphabet, padded or not; a 64-digit hex string
 * (a SHA-256 written in hex) is accepted too, so a change of hash encoding
 * on the server shows up as a clear mismatch rather than a crash.
 * Returns null on malformed input.
 */
export function decodeBytes(text) {
  if (typeof text !== 'string') return null;
  const s = text.trim();
  if (/^[0-9a-fA-F]{64}$/.test(s)) {
    const out = new Uint8Array(32);
    for (let i = 0; i < 32; i++) out[i] = parseInt(s.slice(i * 2, i * 2 + 2), 16);
    return out;
  }
  let b64 = s.replace(/-/g, '+').replace(/_/g, '/');
  while (b64.length % 4 !== 0) b64 += '=';
  try {
    const binary = atob(b64);
    const out = new Uint8Array(binary.length);
    for (let i = 0; i < binary.length; i++) out[i] = binary.charCodeAt(i);
    return out;
  } catch {
    return null;
  }
}

/** Standard padded base64, the encoding the audit log uses for hashes. */
export function base64Encode(bytes) {
  let binary = '';
  for (const b of bytes) binary += String.fromCharCode(b);
  return btoa(binary);
}

/**
 * The payload of a JWT as an object, or null. For display and routing
 * decisions only: the console never trusts it for access control, the
 * server checks every token it receives.
 */
export function jwtPayload(token) {
  if (typeof token !== 'string') return null;
  const part = token.split('.')[1];
  if (!part) return null;
  const bytes = decodeBytes(part);
  if (!bytes) return null;
  try {
    const value = JSON.parse(new TextDecoder().decode(bytes));
    return value && typeof value === 'object' ? value : null;
  } catch {
    return null;
  }
}

/** Whether the token's `may_act` claim names `agent` (RFC 8693 §4.4). */
export function mayActNames(claims, agent) {
  if (!claims || !agent) return false;
  const mayAct = claims.may_act;
  // `may_act` is one object; an array of them is tolerated.
  const entries = Array.isArray(mayAct) ? mayAct : [mayAct];
  return entries.some((entry) => {
    const sub = entry?.sub;
    return Array.isArray(sub) ? sub.includes(agent) : sub === agent;
  });
}

/** `n` random bytes as base64url (PKCE verifier, OAuth state). */
export function randomToken(n = 32) {
  const bytes = new Uint8Array(n);
  crypto.getRandomValues(bytes);
  return base64UrlEncode(bytes);
}

/** The PKCE S256 pair (RFC 7636 §4.1–4.2): a 32-byte verifier and its challenge. */
export async function pkcePair() {
  if (!globalThis.crypto?.subtle) {
    throw new Error(
      'this browser offers no Web Crypto here: open the console on http://127.0.0.1 or over https',
    );
  }
  const verifier = randomToken(32);
  const digest = await crypto.subtle.digest('SHA-256', new TextEncoder().encode(verifier));
  return { verifier, challenge: base64UrlEncode(new Uint8Array(digest)) };
}
