import { useId, useState, type FormEvent } from 'react';
import { client } from '../core/client';
import { ApiError } from '../core/http';

function describe(e: unknown, mode: 'register' | 'login'): string {
  if (e instanceof ApiError) {
    if (e.status === 409) return 'That username is taken. Try another one.';
    if (e.status === 401) return 'Wrong username or password.';
    if (e.status === 429) return `Too many attempts. Try again in ${e.retryAfterS ?? 60} seconds.`;
    return e.message;
  }
  if (e instanceof TypeError) return 'The server cannot be reached. Check your connection.';
  return mode === 'register' ? `Could not create the account: ${String(e)}` : String(e);
}

export function AuthScreen() {
  const [mode, setMode] = useState<'register' | 'login'>('register');
  const [username, setUsername] = useState('');
  const [password, setPassword] = useState('');
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string>();
  const userId = useId();
  const passId = useId();
  const hintId = useId();

  async function submit(ev: FormEvent) {
    ev.preventDefault();
    setBusy(true);
    setError(undefined);
    try {
      if (mode === 'register') await client.register(username.trim(), password);
      else await client.login(username.trim(), password);
    } catch (e) {
      setError(describe(e, mode));
    } finally {
      setBusy(false);
    }
  }

  return (
    <main className="auth">
      <div className="auth-card">
        <h1 className="brand">Tern</h1>
        <p className="tagline">
          End-to-end encrypted chat. Only the people in a conversation can read it.
        </p>
        <div className="tabs" role="group" aria-label="Account">
          <button
            type="button"
            className={mode === 'register' ? 'tab active' : 'tab'}
            aria-pressed={mode === 'register'}
            onClick={() => setMode('register')}
          >
            Create account
          </button>
          <button
            type="button"
            className={mode === 'login' ? 'tab active' : 'tab'}
            aria-pressed={mode === 'login'}
            onClick={() => setMode('login')}
          >
            Log in
          </button>
        </div>
        <form
          onSubmit={(e) => void submit(e)}
          aria-label={mode === 'register' ? 'Create account' : 'Log in'}
        >
          <h2>{mode === 'register' ? 'Create your account' : 'Welcome back'}</h2>
          <label htmlFor={userId}>Username</label>
          <input
            id={userId}
            name="username"
            autoComplete="username"
            required
            minLength={1}
            maxLength={64}
            value={username}
            onChange={(e) => setUsername(e.target.value)}
          />
          <label htmlFor={passId}>Password</label>
          <input
            id={passId}
            name="password"
            type="password"
            autoComplete={mode === 'register' ? 'new-password' : 'current-password'}
            required
            minLength={mode === 'register' ? 8 : 1}
            aria-describedby={mode === 'register' ? hintId : undefined}
            value={password}
            onChange={(e) => setPassword(e.target.value)}
          />
          {mode === 'register' && (
            <p id={hintId} className="hint">
              At least 8 characters.
            </p>
          )}
          {error && (
            <p className="error" role="alert">
              {error}
            </p>
          )}
          <button type="submit" className="primary" disabled={busy}>
            {busy ? 'Please wait…' : mode === 'register' ? 'Create account' : 'Log in'}
          </button>
        </form>
      </div>
    </main>
  );
}
