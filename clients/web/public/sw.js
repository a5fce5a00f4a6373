// The page's service worker: the page opens with no network.
//
// It keeps the page ('/') and the build's files (listed by the build's
// manifest), and nothing else. The build's files under /assets/ are named by
// their content, so a kept copy is served as is (a reload does not fetch the
// 550 KB engine again); a file of the build missing from the copy is fetched
// and kept, but only if the manifest lists it and the server answered with it
// (never the page, or an error, under a script's name). A navigation goes to the
// network when it answers (the kept page refreshed, under '/' whatever the
// address) and to the kept page without one. Anything else is not kept.
// /api/transport is never kept: it names the current certificate. On
// activation, files of earlier builds are dropped. The replica itself lives in
// IndexedDB, not here.
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
  return files;
}

/** The build's files, as this worker last read them. */
let known = null;

async function knownFiles() {
  known ??= await pageFiles();
  return known;
}

self.addEventListener('install', (event) => {
  event.waitUntil(
    pageFiles()
      .then(async (files) => {
        known = files;
        await (await caches.open(CACHE)).addAll([...files]);
      })
      .then(() => self.skipWaiting()),
  );
});

self.addEventListener('activate', (event) => {
  event.waitUntil(
    (async () => {
      const keys = await caches.keys();
      await Promise.all(keys.filter((k) => k !== CACHE).map((k) => caches.delete(k)));
      // Files of earlier builds (other content names) are not needed again.
      const files = await knownFiles();
      const cache = await caches.open(CACHE);
      for (const request of await cache.keys()) {
        if (!files.has(new URL(request.url).pathname)) await cache.delete(request);
      }
      await self.clients.claim();
    })(),
  );
});

/** Whether `response` is the file asked for, fit to keep: a success, not the page. */
function keepable(response) {
  const type = response.headers.get('content-type') ?? '';
  return response.ok && !type.startsWith('text/html');
}

self.addEventListener('fetch', (event) => {
  const url = new URL(event.request.url);
  if (event.request.method !== 'GET' || url.origin !== location.origin || url.pathname.startsWith('/api/')) return;
  if (url.pathname.startsWith('/assets/')) {
    event.respondWith(
      caches.match(event.request).then(
        (kept) =>
          kept ??
          fetch(event.request).then(async (response) => {
            if (keepable(response) && (await knownFiles()).has(url.pathname)) {
              const copy = response.clone();
              void caches.open(CACHE).then((cache) => cache.put(url.pathname, copy));
            }
            return response;
          }),
      ),
    );
    return;
  }
  if (event.request.mode !== 'navigate') return;
  event.respondWith(
    fetch(event.request)
      .then((response) => {
        if (response.ok) {
          const copy = response.clone();
          void caches.open(CACHE).then((cache) => cache.put('/', copy));
        }
        return response;
      })
      .catch(async () => (await caches.match('/')) ?? Response.error()),
  );
});
