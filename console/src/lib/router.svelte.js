// Client-side routing with the History API. The server answers every app
// path with index.html, so a reload lands on the same page.

export const PAGES = [
  { path: '/chat', label: 'Chat' },
  { path: '/approvals', label: 'Approvals' },
  { path: '/consents', label: 'Consents' },
  { path: '/audit', label: 'Audit' },
  { path: '/identities', label: 'Identities' },
  { path: '/leases', label: 'Leases' },
  { path: '/streams', label: 'Streams' },
];

export const route = $state({ path: location.pathname, search: location.search });

function sync() {
  route.path = location.pathname;
  route.search = location.search;
}

window.addEventListener('popstate', sync);

/** Goes to `url` (same origin) without a reload. */
export function navigate(url, { replace = false } = {}) {
  if (replace) history.replaceState(null, '', url);
  else history.pushState(null, '', url);
  sync();
}

/** A click handler for in-app links: plain clicks stay in the app. */
export function link(event) {
  if (event.defaultPrevented || event.button !== 0) return;
  if (event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
  const href = event.currentTarget.getAttribute('href');
  if (!href || !href.startsWith('/')) return;
  event.preventDefault();
  navigate(href);
}
