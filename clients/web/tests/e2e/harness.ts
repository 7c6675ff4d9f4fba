// Test harness: a test CA and a server certificate it signs (openssl), an NSS certificate
// database that trusts the CA (certutil, the way a user's Chromium on Linux trusts a root), the
// real `tern` binary serving the built app, and Debian's Chromium driven by Playwright.

import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  rmSync,
  writeFileSync,
  readFileSync,
  openSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { chromium, test, type Browser } from '@playwright/test';

export const WEB_DIR = resolve(import.meta.dirname, '../../dist');
export const REPO = resolve(import.meta.dirname, '../../../..');
export const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';

export function ternBinary(): string {
  const bin =
    process.env.TERN_BIN ??
    join(process.env.CARGO_TARGET_DIR ?? join(REPO, 'target'), 'debug', 'tern');
  if (!existsSync(bin)) {
    throw new Error(`tern binary not found at ${bin}: cargo build -p tern-gateway --bin tern`);
  }
  return bin;
}

export interface Pki {
  dir: string;
  caCert: string;
  cert: string;
  key: string;
  /** HOME for Chromium: its ~/.pki/nssdb trusts the test CA. */
  home: string;
}

function openssl(args: string[], cwd: string): void {
  execFileSync('openssl', args, { cwd, stdio: 'pipe' });
}

/** A CA and an ECDSA P-256 leaf for 127.0.0.1/localhost, valid 13 days (so its hash could be
 * pinned by WebTransport too, which allows at most 14). */
export function makePki(): Pki {
  const dir = mkdtempSync(join(tmpdir(), 'tern-web-pki-'));
  openssl(['ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', 'ca.key'], dir);
  openssl(
    [
      'req',
      '-x509',
      '-new',
      '-key',
      'ca.key',
      '-sha256',
      '-days',
      '30',
      '-subj',
      '/CN=Tern test CA',
      '-addext',
      'basicConstraints=critical,CA:TRUE',
      '-addext',
      'keyUsage=critical,keyCertSign,cRLSign',
      '-out',
      'ca.pem',
    ],
    dir,
  );
  openssl(['ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', 'server.ec.key'], dir);
  openssl(['pkcs8', '-topk8', '-nocrypt', '-in', 'server.ec.key', '-out', 'server.key'], dir);
  openssl(
    ['req', '-new', '-key', 'server.key', '-subj', '/CN=127.0.0.1', '-out', 'server.csr'],
    dir,
  );
  writeFileSync(
    join(dir, 'ext.cnf'),
    [
      'basicConstraints=critical,CA:FALSE',
      'keyUsage=critical,digitalSignature',
      'extendedKeyUsage=serverAuth',
      'subjectAltName=IP:127.0.0.1,DNS:localhost',
    ].join('\n'),
  );
  openssl(
    [
      'x509',
      '-req',
      '-in',
      'server.csr',
      '-CA',
      'ca.pem',
      '-CAkey',
      'ca.key',
      '-CAcreateserial',
      '-days',
      '13',
      '-sha256',
      '-extfile',
      'ext.cnf',
      '-out',
      'server.pem',
    ],
    dir,
  );
  const home = join(dir, 'home');
  const nss = join(home, '.pki', 'nssdb');
  mkdirSync(nss, { recursive: true });
  execFileSync('certutil', ['-N', '-d', `sql:${nss}`, '--empty-password'], { stdio: 'pipe' });
  execFileSync(
    'certutil',
    ['-A', '-d', `sql:${nss}`, '-n', 'Tern test CA', '-t', 'C,,', '-i', join(dir, 'ca.pem')],
    {
      stdio: 'pipe',
    },
  );
  return {
    dir,
    caCert: join(dir, 'ca.pem'),
    cert: join(dir, 'server.pem'),
    key: join(dir, 'server.key'),
    home,
  };
}

/** An NSS db (HOME for Chromium) that trusts exactly `certPem` as a server certificate ("P"):
 * what a person does when they choose to trust a self-signed server. */
export function trustServerCert(certPem: string): Pki {
  const dir = mkdtempSync(join(tmpdir(), 'tern-web-selfsigned-'));
  const home = join(dir, 'home');
  const nss = join(home, '.pki', 'nssdb');
  mkdirSync(nss, { recursive: true });
  execFileSync('certutil', ['-N', '-d', `sql:${nss}`, '--empty-password'], { stdio: 'pipe' });
  execFileSync(
    'certutil',
    ['-A', '-d', `sql:${nss}`, '-n', 'tern self-signed', '-t', 'P,,', '-i', certPem],
    {
      stdio: 'pipe',
    },
  );
  return { dir, caCert: certPem, cert: certPem, key: '', home };
}

/** The first file named `name` under `dir`. */
export function findFile(dir: string, name: string): string | undefined {
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, entry.name);
    if (entry.isFile() && entry.name === name) return p;
    if (entry.isDirectory()) {
      const found = findFile(p, name);
      if (found) return found;
    }
  }
  return undefined;
}

export interface Server {
  origin: string;
  authority: string;
  dataDir: string;
  readonly process: ChildProcess;
  log: string;
  /** kill -9: every connection is cut at once. */
  kill(): Promise<void>;
  /** kill -9 if running, then the same server again (same port, same data). */
  restart(): Promise<void>;
  stop(): Promise<void>;
}

export interface ServerOptions {
  pki?: Pki;
  /** Extra `tern serve` arguments. */
  args?: string[];
  /** TOML lines for a config file. */
  config?: string[];
}

/** Spawns `tern serve` with `args`; resolves with the listen authority from its banner. */
async function spawnTern(
  args: string[],
  log: string,
): Promise<{ child: ChildProcess; authority: string }> {
  const logFd = openSync(log, 'a');
  const child = spawn(ternBinary(), args, {
    stdio: ['ignore', 'pipe', logFd],
    env: { ...process.env, TERN_LOG: process.env.TERN_LOG ?? 'info' },
  });
  const authority = await new Promise<string>((resolvePromise, reject) => {
    const timer = setTimeout(() => reject(new Error(`no banner within 60 s; log: ${log}`)), 60_000);
    const rl = createInterface({ input: child.stdout as NodeJS.ReadableStream });
    let addr: string | undefined;
    rl.on('line', (line) => {
      const m = /^tern listening on (\S+)/.exec(line);
      if (m) addr = m[1];
      if (addr && /certificate sha-256|web app:/.test(line)) {
        clearTimeout(timer);
        resolvePromise(addr);
      }
    });
    child.on('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`tern exited with ${code}: ${readFileSync(log, 'utf8').slice(-2000)}`));
    });
  });
  return { child, authority };
}

function stopChild(child: ChildProcess, signal: NodeJS.Signals): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise<void>((r) => {
    const t = setTimeout(() => {
      child.kill('SIGKILL');
      r();
    }, 10_000);
    child.once('exit', () => {
      clearTimeout(t);
      r();
    });
    child.kill(signal);
  });
}

/** Starts `tern serve` on an ephemeral loopback port; resolves once it printed its banner. */
export async function startServer(opts: ServerOptions = {}): Promise<Server> {
  const root = mkdtempSync(join(tmpdir(), 'tern-web-server-'));
  const dataDir = join(root, 'data');
  const log = join(root, 'server.log');
  const config = join(root, 'tern.toml');
  writeFileSync(config, ['ops_listen = "off"', ...(opts.config ?? [])].join('\n') + '\n');
  const args = (listen: string) => {
    const a = ['serve', '--data-dir', dataDir, '--listen', listen, '--config', config];
    if (opts.pki) a.push('--tls-cert', opts.pki.cert, '--tls-key', opts.pki.key);
    if (!existsSync(join(WEB_DIR, 'index.html'))) {
      throw new Error(`no built app in ${WEB_DIR}: run scripts/build-web.sh first`);
    }
    a.push('--web-dir', WEB_DIR);
    a.push(...(opts.args ?? []));
    return a;
  };
  let { child, authority } = await spawnTern(args('127.0.0.1:0'), log);
  const server: Server = {
    origin: `https://${authority}`,
    authority,
    dataDir,
    get process() {
      return child;
    },
    log,
    async kill() {
      await stopChild(child, 'SIGKILL');
    },
    async restart() {
      await stopChild(child, 'SIGKILL');
      ({ child, authority } = await spawnTern(args(server.authority), log));
    },
    async stop() {
      await stopChild(child, 'SIGTERM');
      if (process.env.TERN_KEEP_SERVER_DIR !== '1') rmSync(root, { recursive: true, force: true });
    },
  };
  return server;
}

/** Debian's Chromium with HOME pointed at the NSS db that trusts the test CA. Never
 * --ignore-certificate-errors. */
export function launchChromium(pki: Pki | undefined, extraArgs: string[] = []): Promise<Browser> {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) if (v !== undefined) env[k] = v;
  if (pki) env.HOME = pki.home;
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    env,
    // The pages come from tern on loopback, so Chromium's Local Network Access checks allow
    // their sockets to 127.0.0.1 with no switch.
    args: ['--no-sandbox', '--disable-dev-shm-usage', ...extraArgs],
  });
}

let counter = 0;
/** A fresh username (3..32 chars of [a-z0-9_.-]). */
export function uniqueName(prefix: string): string {
  counter++;
  return `${prefix}${Date.now().toString(36).slice(-5)}${counter}`;
}

/** What a spec file shares: a fresh test CA, one server with a certificate it signed, one Chromium trusting it. */
export interface Env {
  pki: Pki;
  server: Server;
  browser: Browser;
}

/** Starts the spec file's server and browser before its tests and stops them after. */
export function useServerAndBrowser(): Env {
  const env = {} as Env;
  test.beforeAll(async () => {
    env.pki = makePki();
    env.server = await startServer({ pki: env.pki });
    env.browser = await launchChromium(env.pki);
  });
  test.afterAll(async () => {
    await env.browser?.close();
    await env.server?.stop();
  });
  return env;
}
