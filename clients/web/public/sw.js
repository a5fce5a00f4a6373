// The page's service worker: the page opens with no network.
//
// Every same-origin GET the page makes (the page, its script, styles and the
// WebAssembly engine) is fetched from the network when it answers and kept; with
// no network the kept copy is served. /api/transport is never kept: it names
// the current certificate. The replica itself lives in IndexedDB, not here.
const CACHE = 'callsync-page-v1';

self.addEventListener('install', (event) => {
  event.waitUntil(caches.open(CACHE).then((cache) => cache.addAll(['/'])).then(() => self.skipWaiting()));
});

self.addEventListener('activate', (event) => {
  event.waitUntil(
    caches
      .keys()
      .then((keys) => Promise.all(keys.filter((k) => k !== CACHE).map((k) => caches.delete(k))))
      .then(() => self.clients.claim()),
  );
});

self.addEventListener('fetch', (event) => {
  const url = new URL(event.request.url);
  if (event.request.method !== 'GET' || url.origin !== location.origin || url.pathname.startsWith('/api/')) return;
  event.respondWith(
    fetch(event.request)
      .then((response) => {
        if (response.ok) {
          const copy = response.clone();
          void caches.open(CACHE).then((cache) => cache.put(event.request, copy));
        }
        return response;
      })
      .catch(async () => {
        const cache = await caches.open(CACHE);
        const kept = (await cache.match(event.request)) ?? (event.request.mode === 'navigate' ? await cache.match('/') : undefined);
        return kept ?? Response.error();
      }),
  );
});
