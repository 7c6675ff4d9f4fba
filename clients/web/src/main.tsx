import { StrictMode } from 'react';
import { createRoot } from 'react-dom/client';
import { App } from './App';
import { client, loadSavedSession } from './core/client';
import { SERVICE_WORKER_URL, scriptUrl } from './core/trusted';
import './styles.css';

const root = document.getElementById('root');
if (root) {
  createRoot(root).render(
    <StrictMode>
      <App />
    </StrictMode>,
  );
}

const saved = loadSavedSession();
if (saved) void client.start(saved);

// The app shell keeps working offline (public/sw.js); the outbox is in IndexedDB. The worker's
// URL goes through the page's one Trusted Types policy (core/trusted.ts).
if ('serviceWorker' in navigator && window.isSecureContext) {
  navigator.serviceWorker
    .register(scriptUrl(SERVICE_WORKER_URL))
    .catch((e: unknown) => console.warn('no service worker', e));
}

// For the browser tests and for people debugging: which transport the connection uses.
(window as unknown as { tern?: unknown }).tern = client;
