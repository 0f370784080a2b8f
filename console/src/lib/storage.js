// sessionStorage as JSON. Tokens live here, never in localStorage: they end
// with the tab and are not shared with other tabs.

export function load(key) {
  try {
    const raw = sessionStorage.getItem(key);
    return raw === null ? null : JSON.parse(raw);
  } catch {
    return null;
  }
}

export function save(key, value) {
  try {
    sessionStorage.setItem(key, JSON.stringify(value));
  } catch {
    // Storage full or disabled: the session lasts until the page reloads.
  }
}

export function drop(key) {
  try {
    sessionStorage.removeItem(key);
  } catch {
    // Nothing to remove.
  }
}

export const KEYS = {
  tokens: 'keyless.tokens',
  pkce: 'keyless.pkce',
  conversation: 'keyless.conversation',
};
