// Vite build of the Keyless console. The keyless-console crate's build
// script runs `npm run build -- --outDir <OUT_DIR>/dist` and embeds the
// result; `npm run dev` serves the app with the API proxied to a local
// `keyless up`.
import { defineConfig } from 'vite';
import { svelte } from '@sveltejs/vite-plugin-svelte';

const fabric = process.env.KEYLESS_URL ?? 'http://127.0.0.1:8180';
const proxied = ['/api', '/audit', '/events', '/oauth2', '/.well-known', '/login', '/consent'];

export default defineConfig({
  plugins: [svelte()],
  base: '/',
  build: {
    outDir: 'dist',
    assetsDir: 'assets',
    // The CSP allows scripts from 'self' only: no inlined module preload.
    modulePreload: { polyfill: false },
    assetsInlineLimit: 0,
    sourcemap: false,
    target: 'es2022',
  },
  server: {
    proxy: Object.fromEntries(proxied.map((p) => [p, { target: fabric, changeOrigin: false }])),
  },
});
