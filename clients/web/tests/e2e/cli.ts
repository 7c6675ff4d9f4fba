// The real `tern-cli` (the native client on the same tern-core: Megolm, outbox, cursors) as a
// second person beside the browser ones: one home directory per user, the test CA trusted,
// lines piped into `tern-cli chat`.

import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { REPO, type Pki, type Server } from './harness';
import { PASSWORD } from './app';

export function cliBinary(): string {
  const bin =
    process.env.TERN_CLI_BIN ??
    join(process.env.CARGO_TARGET_DIR ?? join(REPO, 'target'), 'debug', 'tern-cli');
  if (!existsSync(bin)) {
    throw new Error(`tern-cli not found at ${bin}: cargo build -p tern-cli --bin tern-cli`);
  }
  return bin;
}

export interface CliUser {
  name: string;
  /** Runs `tern-cli ARGS` with `stdin`; rejects with its output on a non-zero exit. */
  run(args: string[], stdin?: string, timeoutMs?: number): Promise<string>;
}

/** Registers `name` with the CLI and logs it in (a device of its own, keys published). */
export async function registerCli(server: Server, pki: Pki, name: string): Promise<CliUser> {
  const home = mkdtempSync(join(tmpdir(), 'tern-web-cli-'));
  const bin = cliBinary();
  const run = (args: string[], stdin = '', timeoutMs = 60_000) =>
    new Promise<string>((resolve, reject) => {
      const child = execFile(
        bin,
        ['--server', server.authority, '--ca-file', pki.caCert, '--home', home, ...args],
        {
          env: { ...process.env, TERN_PASSWORD: PASSWORD },
          timeout: timeoutMs,
          maxBuffer: 64 * 1024 * 1024,
        },
        (err, stdout, stderr) => {
          if (err) reject(new Error(`tern-cli ${args.join(' ')}: ${err.message}\n${stderr}`));
          else resolve(stdout);
        },
      );
      child.stdin?.end(stdin);
    });
  await run(['register', name]);
  await run(['login', name]);
  return { name, run };
}
