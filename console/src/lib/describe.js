// One human line per security event for the live panel. Kept apart from the
// component so the wording can be tested without a browser; unknown event
// types still get a readable line from their generic fields.

import { shortName } from './format.js';

function join(...parts) {
  return parts.filter((p) => p !== null && p !== undefined && p !== '').join(' — ');
}

function caepType(event) {
  const t = event.detail?.event_type ?? event.reason;
  return t ? shortName(String(t)) : 'event';
}

/** The panel's line for one audit event. */
export function describe(event) {
  const e = event ?? {};
  const tool = e.tool ?? '';
  const tier = e.tier !== undefined && e.tier !== null ? `tier ${e.tier}` : null;
  const expires =
    e.token_expires_in !== undefined && e.token_expires_in !== null
      ? `token expires in ${e.token_expires_in} s`
      : null;
  const duration =
    typeof e.duration_ms === 'number' ? `${Math.round(e.duration_ms * 10) / 10} ms` : null;
  switch (e.type) {
    case 'token_exchange.success':
      return join(`Token exchange ✓ ${tool}`.trim(), e.rar_summary, expires);
    case 'token_exchange.denied':
      return join(`Token exchange denied ${tool}`.trim(), e.reason);
    case 'token_exchange.error':
      return join(`Token exchange failed ${tool}`.trim(), e.reason);
    case 'approval.required':
      return join(`Approval required: ${e.rar_summary ?? tool}`, e.rar_summary ? tool : null, tier);
    case 'approval.cached':
      return join(`Approval cached (session) ${tool}`.trim(), e.rar_summary);
    case 'approval.granted':
      return join(`Approval granted ${tool}`.trim(), e.rar_summary);
    case 'approval.denied':
      return join(`Approval denied ${tool}`.trim(), e.reason);
    case 'svid.issued':
      return join('SVID issued', e.detail?.spiffe_id ?? e.agent);
    case 'svid.cached':
      return join('SVID cached', e.detail?.spiffe_id ?? e.agent);
    case 'svid.rotated':
      return join('SVID rotated', e.detail?.spiffe_id ?? e.agent);
    case 'caep.sent':
      return `CAEP ${caepType(e)} sent`;
    case 'caep.received':
      return join(`CAEP ${caepType(e)} received`, e.reason !== e.detail?.event_type ? e.reason : null);
    case 'caep.refused':
    case 'caep.delivery_failed':
      return join(`CAEP ${caepType(e)} not delivered`, e.reason);
    case 'risk.warning':
      return join(`Risk ${e.detail?.level ?? ''}`.trim(), e.rar_summary ?? e.reason);
    case 'risk.signal':
      return join('Risk signal', tool, e.reason);
    case 'session.started':
      return 'Session started';
    case 'session.revoked':
      return join('Session revoked', e.reason);
    case 'tool.called':
      return join(`Tool called ${tool}`.trim(), duration, e.outcome !== 'success' ? e.reason : null);
    case 'tool.denied':
      return join(`Tool denied ${tool}`.trim(), e.reason);
    case 'tool.authorized':
      return join(`Tool authorized ${tool}`.trim(), e.rar_summary);
    case 'tool.approved':
      return join(`Tool approved ${tool}`.trim(), e.rar_summary);
    case 'consent.granted':
      return join('Consent granted', e.agent ? shortName(e.agent) : null, e.rar_summary);
    case 'consent.denied':
      return join('Consent denied', e.agent ? shortName(e.agent) : null);
    case 'consent.revoked':
      return join('Consent revoked', e.agent ? shortName(e.agent) : null);
    default:
      return join(`${e.type ?? 'event'} ${tool}`.trim(), e.rar_summary, e.reason, duration);
  }
}

/** The outcome's CSS class; anything unknown is shown like an error (grey). */
export function outcomeClass(outcome) {
  return ['success', 'denied', 'pending', 'error'].includes(outcome) ? outcome : 'error';
}
