// Service worker: keeps the app shell (index.html and the hashed assets) so a reload while the
// network or the server is down still opens the app; the outbox in IndexedDB is sent once the
// connection is back. Never caches /api (private data, tokens): those always go to the network.
const CACHE = 'tern-shell-v1';

self.addEventListener('install', (event) => {
  event.waitUntil(
    caches
      .open(CACHE)
      .then(async (c) => {
        // The hashed assets of this build (written by scripts/postbuild.mjs) and the page.
        const manifest = await fetch('/shell-manifest.json', { cache: 'no-store' })
          .then((r) => (r.ok ? r.json() : { files: [] }))
          .catch(() => ({ files: [] }));
        await c.addAll(['/', ...manifest.files]);
      })
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
  const req = event.request;
  const url = new URL(req.url);
  if (
    req.method !== 'GET' ||
    url.origin !== self.location.origin ||
    url.pathname.startsWith('/api/')
  )
    return;
  if (url.pathname.startsWith('/assets/')) {
    // Hashed, immutable: cache first.
    event.respondWith(
      caches.match(req).then(
        (hit) =>
          hit ??
          fetch(req).then((res) => {
            if (res.ok) {
              const copy = res.clone();
              void caches.open(CACHE).then((c) => c.put(req, copy));
            }
            return res;
          }),
      ),
    );
    return;
  }
  if (req.mode === 'navigate') {
    // The shell: network first (new deployments), the cached copy when offline.
    event.respondWith(
      fetch(req)
        .then((res) => {
          if (res.ok) {
            const copy = res.clone();
            void caches.open(CACHE).then((c) => c.put('/', copy));
          }
          return res;
        })
        .catch(() => caches.match('/').then((hit) => hit ?? Response.error())),
    );
  }
});
