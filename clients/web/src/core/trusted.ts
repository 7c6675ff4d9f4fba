// The page's one Trusted Types policy. The CSP says `require-trusted-types-for 'script'` and
// `trusted-types tern`: a worker's script URL must come from a policy, only one policy named
// `tern` may exist, and it is created once (a second createPolicy('tern') throws). It accepts
// exactly the service worker and the search index's worker (a hashed asset of this build).

import searchWorkerUrl from './search/search-worker.ts?worker&url';

interface TrustedTypePolicy {
  createScriptURL(url: string): unknown;
}
interface TrustedTypes {
  createPolicy(name: string, rules: { createScriptURL(url: string): string }): TrustedTypePolicy;
}

export const SERVICE_WORKER_URL = '/sw.js';
/** The search worker's URL as built (`/assets/worker-<hash>.js`). */
export const SEARCH_WORKER_URL: string = searchWorkerUrl;

const ALLOWED = new Set([SERVICE_WORKER_URL, SEARCH_WORKER_URL]);
let policy: TrustedTypePolicy | null | undefined;

/** `url` as a TrustedScriptURL where Trusted Types exist (else the string itself). */
export function scriptUrl(url: string): string {
  if (policy === undefined) {
    const tt = (globalThis as unknown as { trustedTypes?: TrustedTypes }).trustedTypes;
    policy = tt
      ? tt.createPolicy('tern', {
          createScriptURL(u: string) {
            if (ALLOWED.has(u)) return u;
            throw new Error(`script URL refused: ${u}`);
          },
        })
      : null;
  }
  // A TrustedScriptURL is accepted wherever the DOM types say string.
  return (policy ? policy.createScriptURL(url) : url) as string;
}
