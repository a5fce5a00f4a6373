// The page's service worker: the page opens with no network.
//
// On install it keeps every file of the page (listed by the build's manifest).
// The build's files under /assets/ are named by their content, so a kept copy
// is served as is (a reload does not fetch the 550 KB engine again). Any other
// same-origin GET (the page itself, the manifest) is fetched from the network
// when it answers (and the copy refreshed); with no network the kept copy is
// served. /api/transport is never kept: it names the current certificate. The
// replica itself lives in IndexedDB, not here.
const CACHE = 'callsync-page-v1';

/** The page's files, from the build's manifest (the script, styles and the engine). */
async function pageFiles() {
  const files = new Set(['/']);
  const response = await fetch('/asset-manifest.json', { cache: 'no-store' });
  if (response.ok) {
    const manifest = await response.json();
    for (const chunk of Object.values(manifest)) {
      files.add(`/${chunk.file}`);
      for (const css of chunk.css ?? []) files.add(`/${css}`);
      for (const asset of chunk.assets ?? []) files.add(`/${asset}`);
    }
  }
  return [...files];
}

self.addEventListener('install', (event) => {
  event.waitUntil(
    pageFiles()
      .then(async (files) => (await caches.open(CACHE)).addAll(files))
      .then(() => self.skipWaiting()),
  );
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
  if (url.pathname.startsWith('/assets/')) {
    event.respondWith(
      caches.match(event.request).then(
        (kept) =>
          kept ??
          fetch(event.request).then((response) => {
            if (response.ok) {
              const copy = response.clone();
              void caches.open(CACHE).then((cache) => cache.put(event.request, copy));
            }
            return response;
          }),
      ),
    );
    return;
  }
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
