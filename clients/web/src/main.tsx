import { StrictMode } from 'react';
import { createRoot } from 'react-dom/client';
import { App } from './App';
import { client, loadSavedSession } from './core/client';
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

// The app shell keeps working offline (public/sw.js); the outbox is in IndexedDB. Under the
// CSP's `require-trusted-types-for 'script'` a worker URL must come from a Trusted Types policy:
// `tern` (the only one the CSP allows) accepts exactly '/sw.js'.
interface TrustedTypes {
  createPolicy(
    name: string,
    rules: { createScriptURL(url: string): string },
  ): { createScriptURL(url: string): unknown };
}
if ('serviceWorker' in navigator && window.isSecureContext) {
  const tt = (window as unknown as { trustedTypes?: TrustedTypes }).trustedTypes;
  const policy = tt?.createPolicy('tern', {
    createScriptURL(url: string) {
      if (url === '/sw.js') return url;
      throw new Error(`script URL refused: ${url}`);
    },
  });
  const swUrl = (policy ? policy.createScriptURL('/sw.js') : '/sw.js') as string;
  navigator.serviceWorker
    .register(swUrl)
    .catch((e: unknown) => console.warn('no service worker', e));
}

// For the browser tests and for people debugging: which transport the connection uses.
(window as unknown as { tern?: unknown }).tern = client;
