// Encodings, the agent-grant check and the panel's wording.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { base64UrlEncode, decodeBytes, jwtPayload, mayActNames, pkcePair } from '../src/lib/encoding.js';
import { describe, outcomeClass } from '../src/lib/describe.js';
import { levelNumber, relative, shortName, show } from '../src/lib/format.js';

const AGENT = 'spiffe://example.org/agent/assistant';

function jwt(claims) {
  const enc = (o) => base64UrlEncode(new TextEncoder().encode(JSON.stringify(o)));
  return `${enc({ alg: 'ES256' })}.${enc(claims)}.c2ln`;
}

test('the PKCE challenge is the base64url SHA-256 of the verifier', async () => {
  const { verifier, challenge } = await pkcePair();
  assert.match(verifier, /^[A-Za-z0-9_-]{43}$/);
  const digest = await crypto.subtle.digest('SHA-256', new TextEncoder().encode(verifier));
  assert.equal(challenge, base64UrlEncode(new Uint8Array(digest)));
});

test('RFC 7636 appendix B example', async () => {
  // The verifier and challenge printed in RFC 7636, Appendix B.
  const verifier = 'dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk';
  const digest = await crypto.subtle.digest('SHA-256', new TextEncoder().encode(verifier));
  assert.equal(base64UrlEncode(new Uint8Array(digest)), 'E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM');
});

test('may_act names the agent as a string or in an array', () => {
  assert.equal(mayActNames(jwtPayload(jwt({ may_act: { sub: AGENT } })), AGENT), true);
  assert.equal(mayActNames(jwtPayload(jwt({ may_act: { sub: ['x', AGENT] } })), AGENT), true);
  assert.equal(mayActNames(jwtPayload(jwt({ may_act: { sub: 'spiffe://other' } })), AGENT), false);
  assert.equal(mayActNames(jwtPayload(jwt({ sub: 'u' })), AGENT), false);
  assert.equal(mayActNames(jwtPayload('not a jwt'), AGENT), false);
});

test('hashes decode from base64, base64url and hex', () => {
  const bytes = new Uint8Array(32).map((_, i) => i * 7);
  const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
  assert.deepEqual(decodeBytes(Buffer.from(bytes).toString('base64')), bytes);
  assert.deepEqual(decodeBytes(base64UrlEncode(bytes)), bytes);
  assert.deepEqual(decodeBytes(hex), bytes);
  assert.equal(decodeBytes('%%%'), null);
});

test('panel lines', () => {
  const check = (event, expected) => assert.equal(describe(event), expected);
  check(
    { type: 'token_exchange.success', tool: 'directory.list_users', rar_summary: 'Read users', token_expires_in: 60 },
    'Token exchange ✓ directory.list_users — Read users — token expires in 60 s',
  );
  check(
    { type: 'token_exchange.denied', tool: 'directory.delete_user', reason: 'forbid-delete-user: no' },
    'Token exchange denied directory.delete_user — forbid-delete-user: no',
  );
  check({ type: 'approval.required', rar_summary: 'Pay 10 EUR', tool: 'bank.transfer', tier: 3 }, 'Approval required: Pay 10 EUR — bank.transfer — tier 3');
  check({ type: 'approval.cached', tool: 't' }, 'Approval cached (session) t');
  check(
    { type: 'caep.sent', detail: { event_type: 'https://schemas.openid.net/secevent/caep/event-type/session-revoked' } },
    'CAEP session-revoked sent',
  );
  check({ type: 'risk.warning', detail: { level: 'W3' }, rar_summary: 'step-up' }, 'Risk W3 — step-up');
  check({ type: 'tool.called', tool: 't', duration_ms: 12.34, outcome: 'success' }, 'Tool called t — 12.3 ms');
  check({ type: 'something.new', tool: 't', reason: 'r' }, 'something.new t — r');
  assert.equal(outcomeClass('denied'), 'denied');
  assert.equal(outcomeClass('weird'), 'error');
});

test('display helpers', () => {
  assert.equal(show(null), '—');
  assert.equal(show(''), '—');
  assert.equal(show(['a', 'b']), 'a, b');
  assert.equal(shortName(AGENT), 'assistant');
  assert.equal(levelNumber('W4'), 4);
  assert.equal(levelNumber('W9'), 0);
  const t = 1_764_000_000_000;
  assert.equal(relative(t, t + 5_000), '5 s ago');
  assert.equal(relative(t, t - 120_000), 'in 2 min');
  // Seconds are told apart from milliseconds by size.
  assert.equal(relative(t / 1000, t + 3_600_000), '1 h ago');
  assert.equal(relative('2025-11-24T16:00:00Z', Date.parse('2025-11-24T16:00:30Z')), '30 s ago');
});
