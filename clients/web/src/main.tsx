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

// For the browser tests and for people debugging: which transport the connection uses.
(window as unknown as { tern?: unknown }).tern = client;
